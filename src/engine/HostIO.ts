import {VolumeIoError} from '../errors/errors.js'
import type {EngineGroup, EngineMember} from './EngineGroup.js'
import type {Volume} from '../volume/Volume.js'
import {CloneFlushError} from './Checkpointer.js'
import {extentRange} from './extents.js'
import {HostGate} from './HostGate.js'
import type {RestoreSession} from './Restore.js'

/** An error the NBD layer maps to an NBD errno. */
export class HostIoError extends Error {
  constructor(readonly errno: 'EINVAL' | 'ENOSPC' | 'EPERM' | 'EIO', message: string) {
    super(message)
  }
}

/**
 * The host I/O path (DESIGN §4, §5): every read and write a host makes to the source goes
 * through here, which is what keeps the maps exact.
 *
 * - A write sets D[k] ahead, durably, for every clone that will differ (recipe 1, group
 *   commit in the map), is mirrored to synchronized clones (write-intent: the bit clears
 *   lazily once both copies are written), and during a restore follows recipe 3.
 * - A read during a restore waits for copy on demand of the extents it touches.
 * - flush() is a checkpoint: acknowledged only when data and the bits it depends on are
 *   durable (recipe 4, INV-4). A FUA write is a write followed by the same.
 *
 * The NBD server sees this as its ExportBackend. Many calls may be in flight at once.
 */
export class HostIO {
  readonly gate = new HostGate()
  restore?: RestoreSession
  readonly readOnly: boolean
  writes = 0
  reads = 0
  /** Writes issued to clones (mirrored), for tests and benchmarks. */
  mirroredWrites = 0

  /**
   * Extents a write-intent commit covers at once (16 MiB worth by default, md's bitmap chunk):
   * at one extent a bit, random writes to a synchronized clone paid a map commit for almost
   * every new extent they touched. A crash then recopies whole regions that were written.
   */
  readonly intentRegion: number

  constructor(
    readonly g: EngineGroup,
    opts: {readOnly?: boolean; onMirrorFailure?: (clone: string, err: Error) => void; intentRegionBytes?: number} = {},
  ) {
    this.readOnly = opts.readOnly ?? false
    this.onMirrorFailure = opts.onMirrorFailure
    this.intentRegion = Math.max(1, Math.floor((opts.intentRegionBytes ?? 16 * 1024 * 1024) / g.extentSize))
  }

  private readonly onMirrorFailure?: (clone: string, err: Error) => void

  get size(): number {
    return this.g.volumeSize
  }

  private check(offset: number, length: number, write: boolean): void {
    if (write && this.readOnly) throw new HostIoError('EPERM', 'the export is read-only')
    if (offset < 0 || length < 0 || offset + length > this.size)
      throw new HostIoError(write ? 'ENOSPC' : 'EINVAL', `request [${offset}, +${length}) is past the end of the ${this.size}-byte export`)
  }

  /** Read host data. Waits for COD of the extents it touches during a restore. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false)
    this.reads++
    // A restore being set up is installed before the gate opens: read through it, not past it.
    await this.gate.waitOpen()
    const r = this.restore
    if (r && length > 0) {
      const [s, e] = extentRange(offset, length, this.g.extentSize)
      await r.beforeRead(s, e)
    }
    return this.g.src.read(offset, length)
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    // Synchronously where the volume can (a small page-aligned write to the page cache): a
    // mirrored write is then one pwrite per volume and no promise at all.
    return this.mutate(offset, data.length, fua, (v) => (v.writeNow?.(offset, data) ? undefined : v.write(offset, data)))
  }

  /**
   * WRITE_ZEROES is a write (recipe 6): D and P bits as for a write. Without NO_HOLE the range
   * may become a hole on the source and on every mirrored clone alike, so they stay equal
   * byte for byte and sparse.
   */
  writeZeroes(offset: number, length: number, fua: boolean, noHole = false): Promise<void> {
    return this.mutate(offset, length, fua, (v) => v.writeZeroes(offset, length, {punch: !noHole}))
  }

  /**
   * TRIM is a write of zeros here (recipe 6), never NBD's "anything may be read": clones are
   * compared byte for byte. Its blocks are freed (a hole punched) on the source and on every
   * mirrored clone, so a guest's fstrim frees space instead of filling images with zeros.
   */
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutate(offset, length, fua, (v) => v.trim(offset, length))
  }

  /** Make every acknowledged write durable (INV-4). Waits. */
  async flush(): Promise<void> {
    try {
      await this.g.checkpoint()
    } catch (error) {
      // The source and the maps are durable; the clones that failed were taken out of
      // mirroring and their lost copies marked to do again. The host's flush succeeded.
      if (!(error instanceof CloneFlushError)) throw error
    }
  }

  async clientClosed(): Promise<void> {
    await this.flush()
  }

  /** `apply` makes the change on one volume: undefined when it was done synchronously. */
  private async mutate(offset: number, length: number, fua: boolean, apply: Apply): Promise<void> {
    this.check(offset, length, true)
    if (length === 0) return
    const {g} = this
    const [s, e] = extentRange(offset, length, g.extentSize)
    if (!this.gate.tryEnter()) await this.gate.enter()
    // Registered with the collision detector at once, unless an extent is being copied
    // write-blocking (it collided before): then after that copy.
    const blocked = g.collisions.writeStartWhenFree(s, e)
    if (blocked) await blocked
    // Clones this write goes to, with the extents it made write-intent there.
    const mirrored: Array<{m: EngineMember; marked?: number[]; missed?: boolean}> = []
    let ok = false
    // Extents whose pre-restore data this write replaces without a copy first (reads wait for it).
    let overwriting: number[] | undefined
    const r = this.restore
    try {
      if (r) overwriting = await r.beforeWrite(offset, length, s, e)
      // Recipe 1: D[k] durable before the write that makes source and clone k differ. For a
      // mirrored clone that is the write-intent bit: set ahead of both writes, cleared lazily
      // (CloneMember.sweepIntent) once both completed and the extent went quiet.
      // Only the commits to wait for: a bit already durable needs none (the usual case).
      const marks: Array<Promise<void>> = []
      const busy = (x: number): boolean => g.scoreboard.has(x)
      for (const m of g.members.values()) {
        if (m.state === 'synchronized' || m.state === 'synchronizing') {
          // Decided in the same tick as writeStart above: an extent the sync engine claims
          // from here on sees this write as a collision and is copied again.
          const mir = m.beginMirror(s, e, busy, this.intentRegion)
          if (mir) {
            mirrored.push({m, marked: mir.marked})
            const w = m.map.setDurableOrDone(mir.durable[0], mir.durable[1])
            if (w) marks.push(w)
            continue
          }
        } else if (m.state === 'reverse-syncing') mirrored.push({m})
        const w = m.map.setDurableOrDone(s, e)
        if (w) marks.push(w)
      }
      if (marks.length > 0) await Promise.all(marks)
      // The source and every mirrored clone are written at once; those done synchronously
      // add nothing to wait for. Only the source's failure fails the host write.
      const pending: Array<Promise<void>> = []
      let srcFailed: {error: unknown} | undefined
      try {
        const w = apply(g.src)
        if (w)
          pending.push(
            w.then(
              () => g.noteWritten(g.src),
              (error: unknown) => {
                srcFailed ??= {error}
              },
            ),
          )
        else g.noteWritten(g.src)
      } catch (error) {
        srcFailed = {error}
      }
      for (const x of mirrored) {
        const w = this.mirror(x.m, apply)
        if (w === false) x.missed = true
        else if (w !== true)
          pending.push(
            w.then((ok) => {
              if (!ok) x.missed = true
            }),
          )
      }
      this.mirroredWrites += mirrored.length
      // Every copy settles before this write counts as done or failed: the finally below
      // ends write-intent, and the caller may reuse the data buffer.
      if (pending.length > 0) await Promise.all(pending)
      if (srcFailed) throw srcFailed.error
      for (const x of mirrored) {
        // The clone missed this write: its extents there are no longer write-intent.
        if (x.missed && x.marked) {
          x.m.endMirror(x.marked, false)
          x.marked = undefined
        }
      }
      this.writes++
      ok = true
      r?.afterWrite(s, e)
    } catch (error) {
      if (error instanceof HostIoError) throw error
      throw new HostIoError(error instanceof VolumeIoError && error.errno === 'ENOSPC' ? 'ENOSPC' : 'EIO', (error as Error).message)
    } finally {
      if (overwriting) r?.writeSettled(overwriting)
      for (const {m, marked} of mirrored) if (marked) m.endMirror(marked, ok)
      g.collisions.writeEnd(s, e)
      this.gate.leave()
    }
    if (fua) await this.flush()
  }

  /**
   * Mirror one write to a clone; false when it failed: the host write succeeds anyway, its
   * D bit (set ahead) stays set and records the write the clone missed. A synchronized clone
   * is fractured; a synchronizing one is left to its sync, which copies the extent again
   * (or stops on the clone's error itself).
   */
  private mirror(m: EngineMember, apply: Apply): boolean | Promise<boolean> {
    let w: Promise<void> | undefined
    try {
      w = apply(m.vol)
    } catch (error) {
      return this.mirrorFailed(m, error)
    }
    if (!w) {
      this.g.noteWritten(m.vol)
      return true
    }
    return w.then(
      () => {
        this.g.noteWritten(m.vol)
        return true
      },
      (error: unknown) => this.mirrorFailed(m, error),
    )
  }

  /** A mirrored write to m failed (see mirror()): false, the clone missed the write. */
  private mirrorFailed(m: EngineMember, error: unknown): boolean {
    const err = error instanceof Error ? error : new Error(String(error))
    if (m.state !== 'synchronized') return false
    m.apply('fracture', {reason: `a mirrored write failed: ${err.message}`})
    this.onMirrorFailure?.(m.name, err)
    void this.g.save().catch(() => undefined)
    return false
  }
}

/** A host request's change to one volume: undefined when it was done synchronously. */
type Apply = (v: Volume) => Promise<void> | undefined
