// The benchmarks' per-step statistic, shared by bench.ts and bench_onnx.ts (bench_torch.py uses
// Python's statistics.median): the median of the steps' times, so that a slow phase of a shared
// machine catching a step or two does not move the result.
export function median(ts: number[]): number {
  const s = [...ts].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}
