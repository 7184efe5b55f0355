/* Persistent thread pool and per-thread workspaces.
 *
 * The calling (JS) thread is worker 0 and takes part in every job; nthreads-1 pthreads wait
 * for jobs, spinning briefly before sleeping on a condition variable, so back-to-back kernel
 * calls do not pay a futex wake-up each time. Each job hands out task indices through an
 * atomic counter (dynamic scheduling). The caller returns only when every worker has checked
 * out of the job, so job descriptors are never overwritten while still read.
 */
#define _GNU_SOURCE
#include "cn.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(CN_X86)
#include <immintrin.h>
#define CN_PAUSE() _mm_pause()
#elif defined(CN_ARM64)
#define CN_PAUSE() __asm__ __volatile__("yield")
#else
#define CN_PAUSE() ((void)0)
#endif

#define SPIN_ITERS 20000 /* about 50-200 us of spinning before sleeping */

static pthread_mutex_t g_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_cv_done = PTHREAD_COND_INITIALIZER;

static pthread_t g_workers[CN_MAX_THREADS];
static int g_nworkers = 0;     /* pthreads running (threads - 1) */
static int g_nthreads = 0;     /* configured threads including the caller; 0 = not yet decided */
static int g_quit = 0;

static atomic_uint g_gen;      /* job generation */
static atomic_long g_next;     /* next task index */
static atomic_int g_active;    /* workers that have not checked out of the current job */
static atomic_int g_main_sleeping;
static unsigned g_gen_at_start; /* generation when the workers were created */
static long g_ntasks;
static cn_task_fn g_fn;
static void *g_ctx;

static int default_threads(void) {
  const char *e = getenv("CONVNETS_THREADS");
  if (e && *e) {
    int v = atoi(e);
    if (v >= 1) return v > CN_MAX_THREADS ? CN_MAX_THREADS : v;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
#ifdef __linux__
  {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      int c = CPU_COUNT(&set);
      if (c >= 1 && c < n) n = c;
    }
  }
#endif
  if (n < 1) n = 1;
  if (n > CN_MAX_THREADS) n = CN_MAX_THREADS;
  return (int)n;
}

static void run_tasks(int tid) {
  const long nt = g_ntasks;
  cn_task_fn fn = g_fn;
  void *ctx = g_ctx;
  for (;;) {
    long t = atomic_fetch_add_explicit(&g_next, 1, memory_order_relaxed);
    if (t >= nt) break;
    fn(ctx, t, tid);
  }
}

static void *worker_main(void *arg) {
  int tid = (int)(intptr_t)arg;
  unsigned seen = g_gen_at_start;
  for (;;) {
    unsigned gen;
    int got = 0;
    for (int i = 0; i < SPIN_ITERS; i++) {
      gen = atomic_load_explicit(&g_gen, memory_order_acquire);
      if (gen != seen) {
        got = 1;
        break;
      }
      CN_PAUSE();
    }
    if (!got) {
      pthread_mutex_lock(&g_mtx);
      while ((gen = atomic_load_explicit(&g_gen, memory_order_acquire)) == seen && !g_quit)
        pthread_cond_wait(&g_cv_work, &g_mtx);
      int q = g_quit;
      pthread_mutex_unlock(&g_mtx);
      if (q) return NULL;
    }
    seen = gen;
    run_tasks(tid);
    if (atomic_fetch_sub_explicit(&g_active, 1, memory_order_seq_cst) == 1) {
      if (atomic_load_explicit(&g_main_sleeping, memory_order_seq_cst)) {
        pthread_mutex_lock(&g_mtx);
        pthread_cond_signal(&g_cv_done);
        pthread_mutex_unlock(&g_mtx);
      }
    }
  }
}

static void start_workers(int nthreads) {
  g_quit = 0;
  g_nworkers = 0;
  g_gen_at_start = atomic_load(&g_gen);
  for (int t = 1; t < nthreads; t++) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    if (pthread_create(&g_workers[g_nworkers], &attr, worker_main, (void *)(intptr_t)t) == 0) g_nworkers++;
    pthread_attr_destroy(&attr);
    if (g_nworkers != t) break; /* could not create more: run with what we have */
  }
  g_nthreads = g_nworkers + 1;
}

static void ensure_pool(void) {
  if (g_nthreads == 0) start_workers(default_threads());
}

void cn_pool_shutdown(void) {
  if (g_nworkers > 0) {
    pthread_mutex_lock(&g_mtx);
    g_quit = 1;
    pthread_cond_broadcast(&g_cv_work);
    pthread_mutex_unlock(&g_mtx);
    for (int i = 0; i < g_nworkers; i++) pthread_join(g_workers[i], NULL);
  }
  g_nworkers = 0;
  g_nthreads = 0;
  g_quit = 0;
}

int cn_num_threads(void) {
  ensure_pool();
  return g_nthreads;
}

void cn_set_num_threads(int n) {
  if (n <= 0) n = default_threads();
  if (n > CN_MAX_THREADS) n = CN_MAX_THREADS;
  if (g_nthreads == n) return;
  cn_pool_shutdown();
  start_workers(n);
}

void cn_parallel(long ntasks, cn_task_fn fn, void *ctx) {
  if (ntasks <= 0) return;
  ensure_pool();
  if (ntasks == 1 || g_nworkers == 0) {
    for (long t = 0; t < ntasks; t++) fn(ctx, t, 0);
    return;
  }
  g_fn = fn;
  g_ctx = ctx;
  g_ntasks = ntasks;
  atomic_store_explicit(&g_next, 0, memory_order_relaxed);
  atomic_store_explicit(&g_active, g_nworkers, memory_order_relaxed);
  pthread_mutex_lock(&g_mtx);
  atomic_fetch_add_explicit(&g_gen, 1, memory_order_release);
  pthread_cond_broadcast(&g_cv_work);
  pthread_mutex_unlock(&g_mtx);

  run_tasks(0);

  for (int i = 0; i < SPIN_ITERS; i++) {
    if (atomic_load_explicit(&g_active, memory_order_acquire) == 0) return;
    CN_PAUSE();
  }
  pthread_mutex_lock(&g_mtx);
  atomic_store_explicit(&g_main_sleeping, 1, memory_order_seq_cst);
  while (atomic_load_explicit(&g_active, memory_order_seq_cst) != 0) pthread_cond_wait(&g_cv_done, &g_mtx);
  atomic_store_explicit(&g_main_sleeping, 0, memory_order_release);
  pthread_mutex_unlock(&g_mtx);
}

/* ---- workspaces ------------------------------------------------------------------------- */
typedef struct {
  float *p;
  size_t cap;
} ws_buf;

static ws_buf g_ws[CN_MAX_THREADS][CN_WS_NSLOTS];
static ws_buf g_gws[CN_GWS_NSLOTS];

static float *ws_grow(ws_buf *b, size_t n) {
  if (n == 0) n = 16;
  if (b->cap >= n) return b->p;
  size_t want = n + n / 4 + 64;
  want = (want + 15) & ~(size_t)15;
  free(b->p);
  b->p = NULL;
  b->cap = 0;
  void *p = NULL;
  if (posix_memalign(&p, 64, want * sizeof(float)) != 0) return NULL;
  b->p = (float *)p;
  b->cap = want;
  return b->p;
}

float *cn_ws(int tid, int slot, size_t nfloats) { return ws_grow(&g_ws[tid][slot], nfloats); }
float *cn_gws(int slot, size_t nfloats) { return ws_grow(&g_gws[slot], nfloats); }

void cn_ws_free_all(void) {
  for (int t = 0; t < CN_MAX_THREADS; t++)
    for (int s = 0; s < CN_WS_NSLOTS; s++) {
      free(g_ws[t][s].p);
      g_ws[t][s].p = NULL;
      g_ws[t][s].cap = 0;
    }
  for (int s = 0; s < CN_GWS_NSLOTS; s++) {
    free(g_gws[s].p);
    g_gws[s].p = NULL;
    g_gws[s].cap = 0;
  }
}
