/**
 * Milliseconds on a monotonic clock, for elapsed times and pacing: what performance.now()
 * gives, without it. The `performance` global loads node:perf_hooks on first use (~0.5 ms,
 * and more under load) at the start of every sync and restore; process.hrtime is built in.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6
}
