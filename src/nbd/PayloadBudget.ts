/**
 * The server-wide budget for READ/WRITE payload bytes (issue 13 item 1): bytes a WRITE is
 * receiving or writing, bytes a READ is reading or has queued on its socket and not yet
 * handed to the kernel. Every connection draws from one budget, so memory is bounded
 * across connections, not only within one.
 *
 * Notes on the design:
 * - A request takes its bytes before it runs (READ) or before its payload is read (WRITE);
 *   one that cannot waits, and its connection stops reading its socket meanwhile
 *   (back-pressure reaches the client). Waiters are woken in order on every release.
 * - A request larger than the whole budget is let through when nothing else holds any:
 *   requests then go one at a time, never not at all.
 * - Clients that never read their replies keep their bytes until the payload time-out drops
 *   them. So that they cannot starve everyone else meanwhile, a small reserve serves small
 *   requests of connections that hold nothing: a well-behaved client doing ordinary I/O
 *   keeps being served while the main budget is full.
 * Not thread-safe; one event loop.
 */
export type Grant = 'main' | 'reserve'

export class PayloadBudget {
  used = 0
  reserveUsed = 0
  /** Highest `used + reserveUsed` seen. */
  peak = 0
  /** Highest `used + reserveUsed` since the caller last reset it (the size of the last burst). */
  burst = 0
  /** Called when the last held byte is given back. */
  onDrained?: () => void
  private waiters: Array<() => void> = []

  constructor(
    /** Main budget, bytes. */
    readonly limit: number,
    /** Reserve for small requests of connections holding nothing, bytes. */
    readonly reserve: number,
    /** Largest request the reserve serves. */
    readonly smallMax: number,
  ) {}

  /** Take n bytes for a connection that holds `held` now; undefined when it must wait. */
  take(n: number, held: number): Grant | undefined {
    let g: Grant | undefined
    if (this.used + n <= this.limit || (this.used === 0 && this.reserveUsed === 0)) g = 'main'
    else if (held === 0 && n <= this.smallMax && this.reserveUsed + n <= this.reserve) g = 'reserve'
    if (!g) return undefined
    if (g === 'main') this.used += n
    else this.reserveUsed += n
    this.peak = Math.max(this.peak, this.used + this.reserveUsed)
    this.burst = Math.max(this.burst, this.used + this.reserveUsed)
    return g
  }

  /** Give back what take() granted; wakes the waiters. */
  give(n: number, g: Grant): void {
    if (g === 'main') this.used -= n
    else this.reserveUsed -= n
    if (this.used === 0 && this.reserveUsed === 0) this.onDrained?.()
    if (this.waiters.length === 0) return
    const w = this.waiters
    this.waiters = []
    for (const wake of w) wake()
  }

  /** Call `wake` once, at the next release (then try take() again). */
  wait(wake: () => void): void {
    this.waiters.push(wake)
  }

  /** Connections waiting for bytes. */
  get waiting(): number {
    return this.waiters.length
  }
}
