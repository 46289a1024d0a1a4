/** Someone waits for a claimed extent: made only then (most claims are never waited for). */
interface Waiter {
  done: Promise<void>
  resolve: () => void
}

/**
 * The scoreboard S (DESIGN §1): the extents being copied right now, by the sync engine or
 * by copy on demand. In memory only. A claim is exclusive: nothing copies an extent twice at
 * once, and a host write to an extent in S waits for that copy (recipe 3).
 *
 * Single-threaded (the event loop): claim/release never wait; waitFor() does.
 */
export class Scoreboard {
  /**
   * Claimed extents, each with its waiter once someone waits. A promise per claim made a
   * large sync's garbage grow V8's heap and the process's peak RSS.
   */
  private readonly active = new Map<number, Waiter | undefined>()

  /** Claim extent e; false when it is already being copied. Does not wait. */
  tryClaim(e: number): boolean {
    if (this.active.has(e)) return false
    this.active.set(e, undefined)
    return true
  }

  /** Release a claimed extent and wake whoever waits for it. Does not wait. */
  release(e: number): void {
    if (!this.active.has(e)) return
    const w = this.active.get(e)
    this.active.delete(e)
    w?.resolve()
  }

  has(e: number): boolean {
    return this.active.has(e)
  }

  /** A promise that resolves when e is no longer being copied (at once when it is not). */
  waitFor(e: number): Promise<void> {
    if (!this.active.has(e)) return Promise.resolve()
    let w = this.active.get(e)
    if (!w) {
      let resolve!: () => void
      const done = new Promise<void>((r) => {
        resolve = r
      })
      w = {done, resolve}
      this.active.set(e, w)
    }
    return w.done
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
      await Promise.all([...this.active.keys()].map((e) => this.waitFor(e)))
    }
  }
}
