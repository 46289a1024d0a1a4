import type {Volume} from '../volume/Volume.js'
import type {CodQueue} from './CodQueue.js'
import type {CollisionDetector} from './CollisionDetector.js'
import type {DeltaBits} from './SyncEngine.js'
import type {Scoreboard} from './Scoreboard.js'

export interface CodEngineOptions {
  queue: CodQueue
  scoreboard: Scoreboard
  /** D[c], the restore clone's delta map. */
  map: DeltaBits
  /** The clone (read) and the source (written). */
  from: Volume
  to: Volume
  extentSize: number
  volumeSize: number
  /** True when e must be copied before a host may touch it (D[c][e] ∧ ¬P[e]). */
  needsCopy: (e: number) => boolean
  /** Copies in flight at once. */
  parallel?: number
  /** Unprotected reverse sync: a host write overlapping a copy makes it copy again. */
  collisions?: CollisionDetector
  onWrite?: () => void
  /** A copy failed: the queue's waiters get the error (EIO to the host, never wrong data). */
  onError?: (err: unknown) => void
}

/** [pos, pos+len) of `vol` reads as zeros by its allocation alone (holes, zero runs): no read needed. Waits. */
async function readsZero(vol: Volume, pos: number, len: number): Promise<boolean> {
  if (vol.tellsHoles?.() === false) return false
  const runs = await vol.extents(pos, len)
  return runs.length > 0 && runs.every((r) => r.kind !== 'data')
}

/**
 * The COD engine (DESIGN §1): copies, clone → source, the extents that waiting host requests
 * need, ahead of the sync engine. An extent already claimed in the scoreboard (by the sync
 * engine) is not copied twice: its waiters are woken when that copy completes.
 *
 * kick() never waits; copies run in the background and wake the queue as each completes.
 */
export class CodEngine {
  private running = 0
  copies = 0
  copiedBytes = 0
  /** Of copiedBytes, those of holes of the clone: made to read as zeros, not read. */
  zeroedBytes = 0

  constructor(private readonly o: CodEngineOptions) {}

  /** Look at the queue and start copies for what it wants. Does not wait. */
  kick(): void {
    const limit = this.o.parallel ?? 8
    if (this.running >= limit) return
    for (const e of this.o.queue.wanted()) {
      if (this.running >= limit) break
      if (!this.o.needsCopy(e) || !this.o.scoreboard.tryClaim(e)) continue
      this.running++
      void this.copy(e).finally(() => {
        this.running--
        this.o.queue.wake()
        this.kick()
      })
    }
  }

  private async copy(e: number): Promise<void> {
    const {o} = this
    try {
      // Re-check under the claim: the sync engine may have finished it meanwhile.
      if (!o.needsCopy(e)) return
      const pos = e * o.extentSize
      const len = Math.min(o.extentSize, o.volumeSize - pos)
      o.collisions?.begin(e)
      let collided = true
      try {
        if (await readsZero(o.from, pos, len)) {
          this.zeroedBytes += len
          // A hole (or zero run) of the clone is not read: the source is made to read as
          // zeros there, punched (a block device: zeroed), unless it already does by its own
          // allocation. Either way the next checkpoint flushes the source before this
          // extent's clear is durable (recipe 2): a hole found may be a punch not yet durable.
          if (!(o.to.tellsHoles?.() !== false && (await readsZero(o.to, pos, len)))) await o.to.writeZeroes(pos, len, {punch: o.to.kind !== 'block'})
        } else {
          const data = await o.from.read(pos, len)
          await o.to.write(pos, data)
        }
        o.onWrite?.()
      } finally {
        collided = o.collisions?.end(e) ?? false
      }
      // Recipe 2: clear in memory now; durable after the source is fdatasynced. After a
      // collision the bit stays set and the waiter's next kick copies it again.
      if (!collided) o.map.clear(e, e + 1)
      this.copies++
      this.copiedBytes += len
    } catch (error) {
      o.onError?.(error)
    } finally {
      o.scoreboard.release(e)
    }
  }

  get active(): number {
    return this.running
  }
}
