import {VolumeIoError} from '../errors/errors.js'
import type {CloneGroup, CloneMember} from '../group/CloneGroup.js'
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

  constructor(
    readonly g: CloneGroup,
    opts: {readOnly?: boolean; onMirrorFailure?: (clone: string, err: Error) => void} = {},
  ) {
    this.readOnly = opts.readOnly ?? false
    this.onMirrorFailure = opts.onMirrorFailure
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
    return this.mutate(offset, data.length, fua, (v) => v.write(offset, data))
  }

  writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    return this.mutate(offset, length, fua, (v) => v.writeZeroes(offset, length))
  }

  /** TRIM is a write of zeros here (recipe 6): clones must stay comparable byte for byte. */
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.writeZeroes(offset, length, fua)
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

  private async mutate(offset: number, length: number, fua: boolean, apply: (v: Volume) => Promise<void>): Promise<void> {
    this.check(offset, length, true)
    if (length === 0) return
    const {g} = this
    const [s, e] = extentRange(offset, length, g.extentSize)
    await this.gate.enter()
    g.collisions.writeStart(s, e)
    const mirrored: CloneMember[] = []
    let ok = false
    try {
      const r = this.restore
      if (r) await r.beforeWrite(offset, length, s, e)
      // Recipe 1: D[k] durable before the write that makes source and clone k differ.
      const marks: Array<Promise<void>> = []
      for (const m of g.members.values()) {
        if (m.state === 'synchronized' || m.state === 'reverse-syncing') {
          mirrored.push(m)
          if (m.state === 'synchronized') for (let x = s; x < e; x++) m.mirrorInflight.set(x, (m.mirrorInflight.get(x) ?? 0) + 1)
        }
        marks.push(m.map.setDurable(s, e))
      }
      await Promise.all(marks)
      const ops: Array<Promise<void>> = [apply(g.src).then(() => g.noteWritten(g.src))]
      for (const m of mirrored) ops.push(this.mirror(m, apply))
      // Every copy settles before this write counts as done or failed: the finally below
      // clears write-intent bits, and the caller may reuse the data buffer.
      const settled = await Promise.allSettled(ops)
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected')
      if (failed) throw failed.reason
      this.writes++
      ok = true
      r?.afterWrite(s, e)
    } catch (error) {
      if (error instanceof HostIoError) throw error
      throw new HostIoError(error instanceof VolumeIoError && error.errno === 'ENOSPC' ? 'ENOSPC' : 'EIO', (error as Error).message)
    } finally {
      for (const m of mirrored) {
        if (!m.mirrorInflight.size) continue
        for (let x = s; x < e; x++) {
          const n = (m.mirrorInflight.get(x) ?? 1) - 1
          if (n > 0) {
            m.mirrorInflight.set(x, n)
            continue
          }
          m.mirrorInflight.delete(x)
          // Write-intent: both copies written and still mirrored ⇒ equal again. The clear is
          // durable only at a checkpoint after both volumes are fdatasynced (recipe 2).
          if (ok && m.state === 'synchronized') m.map.clear(x, x + 1)
        }
      }
      g.collisions.writeEnd(s, e)
      this.gate.leave()
    }
    if (fua) await this.flush()
  }

  /** Mirror one write to a clone; a failure fractures that clone and the host write succeeds. */
  private async mirror(m: CloneMember, apply: (v: Volume) => Promise<void>): Promise<void> {
    try {
      await apply(m.vol)
      this.g.noteWritten(m.vol)
    } catch (error) {
      const err = error instanceof Error ? error : new Error(String(error))
      // Its D bit was set ahead and stays set: the map records the write the clone missed.
      m.setState('fractured', `a mirrored write failed: ${err.message}`)
      m.record.lastFractureAt = new Date().toISOString()
      this.onMirrorFailure?.(m.name, err)
      void this.g.save().catch(() => undefined)
    }
  }
}
