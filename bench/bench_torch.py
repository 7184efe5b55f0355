# PyTorch side of `npm run bench`: the same measurements on the same machine, JSON on stdout.
# Run with Debian's PyTorch: /usr/bin/python3 bench/bench_torch.py --models ... --threads 2
import argparse, json, os, statistics, sys, time

p = argparse.ArgumentParser()
p.add_argument('--reference', default=os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'reference'))
p.add_argument('--models', default='mobilenetv1,mobilenetv2,resnet18')
p.add_argument('--threads', type=int, default=2)
p.add_argument('--batch', type=int, default=128)
p.add_argument('--train-steps', type=int, default=5)
p.add_argument('--infer-steps', type=int, default=5)
p.add_argument('--latency-steps', type=int, default=20)
p.add_argument('--channels-last', action='store_true')
a = p.parse_args()

import torch
sys.path.insert(0, os.path.abspath(a.reference))
import seed_models  # noqa: E402

torch.set_num_threads(a.threads)
torch.manual_seed(0)
ctors = {'mobilenetv1': seed_models.MobileNetV1, 'mobilenetv2': seed_models.MobileNetV2, 'resnet18': seed_models.ResNet18}
fmt = torch.channels_last if a.channels_last else torch.contiguous_format


def timed(fn, steps, warmup=1):
    # seconds per step: the median of the steps' times, as bench.ts times our side
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


out = {'torch': torch.__version__, 'threads': torch.get_num_threads(), 'channels_last': a.channels_last, 'models': {}}
for name in a.models.split(','):
    net = ctors[name]().to(memory_format=fmt)
    x = torch.rand(a.batch, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (a.batch,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    net.train()
    t_train = timed(train_step, a.train_steps)
    net.eval()
    with torch.no_grad():
        t_inf = timed(lambda: net(x), a.infer_steps)
        x1 = torch.rand(1, 3, 32, 32).to(memory_format=fmt)
        t_lat = timed(lambda: net(x1), a.latency_steps, warmup=3)
    out['models'][name] = {'train_img_s': a.batch / t_train, 'infer_img_s': a.batch / t_inf, 'latency_ms': t_lat * 1e3}

try:
    import resource
    out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
except Exception:
    pass
print(json.dumps(out))
