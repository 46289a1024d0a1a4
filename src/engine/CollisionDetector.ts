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
export class CollisionDetector {
  private readonly writing = new Map<number, number>()
  private readonly watching = new Map<number, boolean>()
  collisions = 0

  /** A host write to extents [start, end) begins. Call before its first map or data I/O. */
  writeStart(start: number, end: number): void {
    for (let e = start; e < end; e++) {
      this.writing.set(e, (this.writing.get(e) ?? 0) + 1)
      if (this.watching.has(e)) this.watching.set(e, true)
    }
  }

  /** The host write to [start, end) completed (or failed). */
  writeEnd(start: number, end: number): void {
    for (let e = start; e < end; e++) {
      const n = (this.writing.get(e) ?? 1) - 1
      if (n <= 0) this.writing.delete(e)
      else this.writing.set(e, n)
    }
  }

  /** The sync engine starts copying e (before reading it). */
  begin(e: number): void {
    this.watching.set(e, this.writing.has(e))
  }

  /** The copy of e is written; true when a host write overlapped it (copy it again). */
  end(e: number): boolean {
    const hit = this.watching.get(e) === true || this.writing.has(e)
    this.watching.delete(e)
    if (hit) this.collisions++
    return hit
  }
}
