/**
 * A token bucket in bytes per second for `--rate`. The rate may change while an operation
 * runs (a re-rate from another shell). 0 or undefined means unlimited.
 */
export class RateLimiter {
  private tokens = 0
  private last = Date.now()

  constructor(private bytesPerSecond?: number) {}

  setRate(bytesPerSecond?: number): void {
    this.bytesPerSecond = bytesPerSecond && bytesPerSecond > 0 ? bytesPerSecond : undefined
    this.tokens = 0
    this.last = Date.now()
  }

  get rate(): number | undefined {
    return this.bytesPerSecond
  }

  /** Give back tokens taken for bytes that will not be copied after all. Does not wait. */
  refund(bytes: number): void {
    const rate = this.bytesPerSecond
    if (!rate || bytes <= 0) return
    this.tokens = Math.min(Math.max(rate / 10, bytes), this.tokens + bytes)
  }

  /**
   * Wait until `bytes` may be copied. Never blocks the event loop. The sync engine takes
   * tokens before it claims extents, so nothing waits on the limiter behind a claim.
   */
  async take(bytes: number, shouldStop: () => boolean = () => false): Promise<void> {
    const rate = this.bytesPerSecond
    if (!rate) return
    const burst = Math.max(rate / 10, bytes)
    for (;;) {
      const now = Date.now()
      this.tokens = Math.min(burst, this.tokens + ((now - this.last) / 1000) * rate)
      this.last = now
      if (this.tokens >= bytes || shouldStop()) break
      const wait = Math.min(250, Math.ceil(((bytes - this.tokens) / rate) * 1000))
      await new Promise((r) => setTimeout(r, Math.max(wait, 1)))
      if (this.bytesPerSecond !== rate) return this.take(bytes, shouldStop)
    }
    this.tokens -= bytes
  }
}
