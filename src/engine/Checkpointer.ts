import type {PersistentMap} from '../map/PersistentMap.js'
import type {Volume} from '../volume/Volume.js'

/**
 * Makes progress and host writes durable, in the only safe order (DESIGN §4):
 *   1. take a ticket from every map (what may become durable: clears of completed copies,
 *      staged P bits of completed host writes);
 *   2. fdatasync every volume written since the last checkpoint (recipe 5: data first);
 *   3. commit P before the delta maps (recipe 3: a clear of D[c] never becomes durable
 *      before the P bit that replaces it), then the delta maps.
 * One checkpoint runs at a time; a request while one runs joins the next one, so every
 * caller's writes (issued before it called) are covered when its promise resolves.
 */
export class Checkpointer {
  private readonly dirty = new Set<Volume>()
  private running?: Promise<void>
  private queued?: Promise<void>
  count = 0

  /**
   * @param maps the maps to commit, P (if any) first; read at each checkpoint.
   */
  constructor(private readonly maps: () => PersistentMap[]) {}

  /** A volume was written: the next checkpoint fdatasyncs it. Does not wait. */
  noteWritten(v: Volume): void {
    this.dirty.add(v)
  }

  /** Run a checkpoint covering everything done before this call. Waits for it. */
  checkpoint(): Promise<void> {
    if (!this.running) {
      this.running = this.once().finally(() => {
        this.running = undefined
      })
      return this.running
    }
    // One is in flight and may have taken its tickets before our caller's writes: queue one more.
    this.queued ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined
        return this.checkpoint()
      })
    return this.queued
  }

  private async once(): Promise<void> {
    const maps = this.maps()
    const tickets = maps.map((m) => m.beginCheckpoint())
    const vols = [...this.dirty]
    this.dirty.clear()
    try {
      await Promise.all(vols.map((v) => v.flush()))
    } catch (error) {
      for (const v of vols) this.dirty.add(v)
      throw error
    }
    // Recipe 3: P (first in the list) becomes durable before any delta clear.
    for (let i = 0; i < maps.length; i++) {
      // eslint-disable-next-line no-await-in-loop
      await maps[i].commitCheckpoint(tickets[i])
    }
    this.count++
  }
}
