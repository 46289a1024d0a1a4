/**
 * Lets host writes run concurrently with each other while an administrative step (start or
 * end of a restore, a fracture) runs alone: exclusive() waits for the writes in flight, holds
 * new ones back, runs its step, and lets them go. This is what makes a fracture atomic with
 * respect to in-flight writes (DESIGN §5).
 */
export class HostGate {
  private active = 0
  private drained?: () => void
  private closed?: Promise<void>

  /** A host write enters at once unless an exclusive step runs (then false: call enter()). Does not wait. */
  tryEnter(): boolean {
    if (this.closed) return false
    this.active++
    return true
  }

  /** A host write enters; waits only while an exclusive step runs. */
  async enter(): Promise<void> {
    while (this.closed) {
      await this.closed
    }
    this.active++
  }

  /**
   * A host read waits only while an exclusive step runs, and is not counted: an exclusive
   * step never waits for reads (a read may wait long for a copy on demand), but a read that
   * starts during one sees its outcome (e.g. a restore installed, not half set up).
   */
  async waitOpen(): Promise<void> {
    while (this.closed) {
      await this.closed
    }
  }

  leave(): void {
    this.active--
    if (this.active === 0) this.drained?.()
  }

  get inflight(): number {
    return this.active
  }

  /** Run fn with no host write in flight and none starting. Waits. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    while (this.closed) {
      await this.closed
    }
    let open!: () => void
    this.closed = new Promise<void>((r) => {
      open = r
    })
    try {
      if (this.active > 0)
        await new Promise<void>((r) => {
          this.drained = r
        })
      this.drained = undefined
      return await fn()
    } finally {
      this.closed = undefined
      open()
    }
  }
}
