/**
 * The collision detector (DESIGN §1, seeds Figs. 10–11): notices a host write to an extent
 * the sync engine is copying, so the engine copies it again instead of clearing its delta
 * bit. Needed wherever host writes are not held back by the copy: forward sync of a clone
 * under host writes, and the unprotected reverse sync.
 *
 * A collision is any overlap in time between a host write to e and a copy of e: a write
 * that started before the copy and is still running counts as much as one that starts
 * during it, because the copy may have read the extent before that write landed.
 */
export interface RangeWatch {
  readonly start: number
  readonly end: number
  hit: boolean
}

export class CollisionDetector {
  private readonly writing = new Map<number, number>()
  private readonly watching = new Map<number, boolean>()
  /**
   * Extents copied write-blocking (a copy that collided before): new host writes wait for
   * the copy; `drained` is resolved once the writes in flight end.
   */
  private readonly blocked = new Map<number, {drained?: () => void; free: Promise<void>; release: () => void}>()
  /** Ranges watched whole by the sync engine's hole sweep (SyncEngine.sweepHoles): a few at most. */
  private readonly ranges = new Set<RangeWatch>()
  collisions = 0

  /**
   * Watch extents [start, end) without claiming them one by one: `hit` becomes true when a
   * host write to any of them is in flight now or begins before endWatch(). For the hole
   * sweep, which looks at a long range, then clears its bits in one tick only if no write
   * came. Does not wait.
   */
  watchRange(start: number, end: number): RangeWatch {
    const w: RangeWatch = {start, end, hit: false}
    for (const e of this.writing.keys())
      if (e >= start && e < end) {
        w.hit = true
        break
      }
    this.ranges.add(w)
    return w
  }

  endWatch(w: RangeWatch): void {
    this.ranges.delete(w)
  }

  /**
   * A host write to [start, end) begins: registered at once (writeStart) unless an extent of
   * it is being copied write-blocking; then it waits for that copy and registers after.
   */
  writeStartWhenFree(start: number, end: number): Promise<void> | undefined {
    if (this.blocked.size > 0)
      for (let e = start; e < end; e++) {
        const b = this.blocked.get(e)
        if (b) return b.free.then(() => this.writeStartWhenFree(start, end))
      }
    this.writeStart(start, end)
    return undefined
  }

  /** A host write to extents [start, end) begins. Call before its first map or data I/O. */
  writeStart(start: number, end: number): void {
    for (const w of this.ranges) if (start < w.end && end > w.start) w.hit = true
    for (let e = start; e < end; e++) {
      this.writing.set(e, (this.writing.get(e) ?? 0) + 1)
      if (this.watching.has(e)) this.watching.set(e, true)
    }
  }

  /** The host write to [start, end) completed (or failed). */
  writeEnd(start: number, end: number): void {
    for (let e = start; e < end; e++) {
      const n = (this.writing.get(e) ?? 1) - 1
      if (n <= 0) {
        this.writing.delete(e)
        this.blocked.get(e)?.drained?.()
      } else this.writing.set(e, n)
    }
  }

  /**
   * Copy e write-blocking (QEMU's copy-mode=write-blocking, for one extent): new host writes
   * to e wait until end(e); resolves once the writes already in flight ended, then call
   * begin(e). An extent written all the time would otherwise collide with every copy.
   */
  async block(e: number): Promise<void> {
    let release!: () => void
    const free = new Promise<void>((r) => {
      release = r
    })
    const b: {drained?: () => void; free: Promise<void>; release: () => void} = {free, release}
    this.blocked.set(e, b)
    if (this.writing.has(e))
      await new Promise<void>((r) => {
        b.drained = r
      })
  }

  /** The sync engine starts copying e (before reading it). */
  begin(e: number): void {
    this.watching.set(e, this.writing.has(e))
  }

  /** The copy of e is written; true when a host write overlapped it (copy it again). */
  end(e: number): boolean {
    const hit = this.watching.get(e) === true || this.writing.has(e)
    this.watching.delete(e)
    const b = this.blocked.get(e)
    this.blocked.delete(e)
    b?.release()
    if (hit) this.collisions++
    return hit
  }
}
