/**
 * The COD queue (DESIGN §1): host requests waiting for extents to be copied on demand.
 *
 * Each waiter names the extents it needs; it is released as soon as ITS extents are all
 * ready (the predicate says so), not when the whole queue drains. The COD engine reads
 * `wanted()` to know what to copy next, ahead of the sync engine.
 */
export class CodQueue {
  private readonly waiters = new Set<{extents: number[]; resolve: () => void; reject: (e: Error) => void}>()

  /** @param ready true when extent e needs no copy before the host may touch it. */
  constructor(private readonly ready: (e: number) => boolean) {}

  /**
   * Wait until every extent in `extents` is ready. Resolves at once when they already are.
   * Rejects when the queue is failed (the restore stopped with an error).
   */
  waitFor(extents: number[]): Promise<void> {
    const pending = extents.filter((e) => !this.ready(e))
    if (pending.length === 0) return Promise.resolve()
    return new Promise<void>((resolve, reject) => {
      this.waiters.add({extents: pending, resolve, reject})
    })
  }

  /** Re-evaluate waiters after copies completed; releases each whose extents are all ready. */
  wake(): void {
    for (const w of this.waiters) {
      w.extents = w.extents.filter((e) => !this.ready(e))
      if (w.extents.length === 0) {
        this.waiters.delete(w)
        w.resolve()
      }
    }
  }

  /** The extents waiters still need, oldest request first, without duplicates. */
  wanted(): number[] {
    const out: number[] = []
    const seen = new Set<number>()
    for (const w of this.waiters)
      for (const e of w.extents)
        if (!seen.has(e) && !this.ready(e)) {
          seen.add(e)
          out.push(e)
        }
    return out
  }

  get length(): number {
    return this.waiters.size
  }

  /** Fail every waiter (EIO to the host, never wrong data). */
  failAll(err: Error): void {
    for (const w of this.waiters) w.reject(err)
    this.waiters.clear()
  }
}
