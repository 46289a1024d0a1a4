/**
 * The scoreboard S (DESIGN §1): the extents being copied right now, by the sync engine or
 * by copy on demand. In memory only. A claim is exclusive: nothing copies an extent twice at
 * once, and a host write to an extent in S waits for that copy (recipe 3).
 *
 * Single-threaded (the event loop): claim/release never wait; waitFor() does.
 */
export class Scoreboard {
  private readonly active = new Map<number, {done: Promise<void>; resolve: () => void}>()

  /** Claim extent e; false when it is already being copied. Does not wait. */
  tryClaim(e: number): boolean {
    if (this.active.has(e)) return false
    let resolve!: () => void
    const done = new Promise<void>((r) => {
      resolve = r
    })
    this.active.set(e, {done, resolve})
    return true
  }

  /** Release a claimed extent and wake whoever waits for it. Does not wait. */
  release(e: number): void {
    const slot = this.active.get(e)
    if (!slot) return
    this.active.delete(e)
    slot.resolve()
  }

  has(e: number): boolean {
    return this.active.has(e)
  }

  /** A promise that resolves when e is no longer being copied (at once when it is not). */
  waitFor(e: number): Promise<void> {
    return this.active.get(e)?.done ?? Promise.resolve()
  }

  /** First claimed extent in [start, end), or -1. */
  firstBusy(start: number, end: number): number {
    if (this.active.size === 0) return -1
    if (end - start > this.active.size) {
      let best = -1
      for (const e of this.active.keys()) if (e >= start && e < end && (best < 0 || e < best)) best = e
      return best
    }
    for (let e = start; e < end; e++) if (this.active.has(e)) return e
    return -1
  }

  get size(): number {
    return this.active.size
  }

  /** Resolves when nothing is being copied. */
  async drain(): Promise<void> {
    while (this.active.size > 0) {
      // eslint-disable-next-line no-await-in-loop
      await Promise.all([...this.active.values()].map((s) => s.done))
    }
  }
}
