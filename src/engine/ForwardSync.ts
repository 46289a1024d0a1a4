import {StateError} from '../errors/errors.js'
import {monotonicMs} from '../io/clock.js'
import {randomUuid} from '../io/randomId.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import type {EngineGroup, EngineMember} from './EngineGroup.js'
import type {HostGate} from './HostGate.js'
import {CloneFlushError} from './Checkpointer.js'
import {RateLimiter} from './RateLimiter.js'
import {SyncEngine, type SyncProgress} from './SyncEngine.js'

export interface ForwardSyncOptions {
  clone: string
  /** Copy every extent, comparing first (as for a map that cannot be trusted). */
  full?: boolean
  rate?: number
  command: string
  /** Under `serve`: the host gate, so the switch to `synchronized` is atomic w.r.t. writes. */
  gate?: HostGate
  /** Chunk size and chunks in flight (tests: small chunks interleave with host writes). */
  tuning?: {chunkBytes?: number; parallel?: number}
}

export interface SyncSummary {
  clone: string
  operationId: string
  completed: boolean
  alreadySynchronized: boolean
  compared: boolean
  totalExtents: number
  copiedBytes: number
  skippedBytes: number
  collisions: number
  /**
   * The sync's own time in milliseconds: from its start (the operation recorded) until the
   * clone's data and map were durable; a process's start-up and the group's locking are not in it.
   */
  elapsedMs: number
}

/**
 * Forward synchronization of clone k (source → clone) over D[k], in ascending order. Host
 * writes may go on meanwhile (under `serve`), and the sync converges under them by active
 * mirroring (QEMU's mirror, DRBD's resync): a write to extents already equal (copied, or
 * never dirty: bit clear) is mirrored to the clone behind a write-intent bit, as for a
 * synchronized clone; a write to an extent not yet copied only sets D[k] (the sync copies
 * it); a write to an extent being copied is a collision and that extent alone is copied
 * again. Host writes never wait for a copy (QEMU's write-blocking mode makes them wait): a
 * re-copy costs one extent, a wait would add a whole chunk's copy to a host write's latency.
 * So one pass plus the collided residue copies everything; when no extent needs a copy the
 * clone is `synchronized`.
 */
export class ForwardSync {
  readonly engine: SyncEngine
  readonly limiter: RateLimiter
  /** The group's collision count when this sync began (the detector counts for the group's lifetime). */
  private readonly collisionsBefore: number

  private constructor(
    readonly g: EngineGroup,
    readonly member: EngineMember,
    readonly operationId: string,
    readonly compared: boolean,
    rate?: number,
    private readonly gate?: HostGate,
    private readonly startedAt = monotonicMs(),
    tuning: ForwardSyncOptions['tuning'] = {},
  ) {
    this.limiter = new RateLimiter(rate)
    this.collisionsBefore = g.collisions.collisions
    this.engine = new SyncEngine({
      map: member.map,
      from: g.src,
      to: member.vol,
      extentSize: g.extentSize,
      volumeSize: g.volumeSize,
      scoreboard: g.scoreboard,
      collisions: g.collisions,
      // Write-intent extents are equal: host writes there are mirrored to the clone.
      skip: () => member.intent,
      compare: compared,
      limiter: this.limiter,
      chunkBytes: tuning.chunkBytes,
      parallel: tuning.parallel,
      checkpoint: () => this.checkpoint(),
      onWrite: () => g.noteWritten(member.vol),
    })
  }

  /**
   * Prepare a sync: refuse during a restore, fall back to compare-and-copy when the map cannot
   * be trusted or --full is given (D[k] all set, durably), record the operation. Waits.
   */
  static async start(g: EngineGroup, opts: ForwardSyncOptions): Promise<ForwardSync | SyncSummary> {
    const startedAt = monotonicMs()
    const op = g.record.operation
    if (op?.kind === 'restore')
      throw new StateError(`group ${g.name} has an interrupted restore from clone ${op.clone}`, `resume it first with \`clonectl restore ${g.name}\``)
    const m = g.member(opts.clone)
    m.requireAvailable()
    if (m.state === 'restoring' || m.state === 'reverse-syncing')
      throw new StateError(`clone ${m.name} is being restored from`, `wait for the restore to finish`)
    const compare = Boolean(opts.full) || !m.record.trusted
    if (!compare && m.state === 'synchronized' && m.dirtyCount() === 0) {
      return {clone: m.name, operationId: '', completed: true, alreadySynchronized: true, compared: false, totalExtents: 0, copiedBytes: 0, skippedBytes: 0, collisions: 0, elapsedMs: 0}
    }
    if (compare) {
      if (!opts.full) g.ctx.warn?.(`clone ${m.name}: delta map not trusted; comparing and copying every extent`)
      await g.checkpoint()
      // Nothing is taken as equal, not even what mirroring says is.
      m.intent = undefined
      const all = new ExtentBitmap(g.extentCount)
      all.setAll()
      await m.map.replaceAll(all)
    }
    const id = randomUuid()
    // Recorded with no host write in flight (under the gate when serving), so a failed save
    // (EMFILE, ENOSPC, a full state file system) is undone exactly: not started, in memory either.
    const record = async (): Promise<void> => {
      const undo = g.snapshotForUndo()
      m.apply('sync-start', {operation: {id, kind: 'sync', clone: m.name, startedAt: new Date().toISOString(), command: opts.command, pid: process.pid, totalExtents: m.dirtyCount(), compare}})
      await g.save().catch((error: unknown) => {
        undo()
        throw error
      })
    }
    await (opts.gate ? opts.gate.exclusive(record) : record())
    return new ForwardSync(g, m, id, compare, opts.rate, opts.gate, startedAt, opts.tuning)
  }

  /** A checkpoint; a clone flush that failed is this sync's error only if it is this clone's. */
  private async checkpoint(): Promise<void> {
    try {
      await this.g.checkpoint()
    } catch (error) {
      if (!(error instanceof CloneFlushError)) throw error
      const mine = error.failures.find((f) => f.volume === this.member.volume)
      if (mine) throw mine.error
    }
  }

  get progress(): SyncProgress {
    return this.engine.progress
  }

  stop(): void {
    this.engine.stop()
  }

  /**
   * Copy until D[k] is empty (→ synchronized) or stopped (→ out-of-sync, map intact so the
   * next sync copies only what is left). Waits. Progress is durable at each checkpoint.
   */
  async run(): Promise<SyncSummary> {
    const {g, member: m} = this
    let completed = false
    let failure: unknown
    const exclusive = <T>(fn: () => Promise<T>): Promise<T> => (this.gate ? this.gate.exclusive(fn) : fn())
    try {
      for (;;) {
        if (!(await this.engine.run())) break
        // A host write may have set a bit since the engine finished: switch to mirrored only
        // with no write in flight and the map empty; otherwise copy what is new.
        completed = await exclusive(async () => {
          if (m.dirtyCount() > 0) return false
          await this.checkpoint()
          m.apply('sync-done')
          m.record.trusted = true
          delete m.record.untrustedReason
          await g.refreshFingerprints()
          await g.save()
          return true
        })
        if (completed) break
      }
    } catch (error) {
      failure = error
      throw error
    } finally {
      if (!completed) {
        // Keep what was copied durable; a failed clone flush was already undone safely
        // (Checkpointer), and the first error is the one to report.
        await this.checkpoint().catch((error: unknown) => {
          failure ??= error
        })
        const why = failure instanceof Error ? failure.message : failure === undefined ? undefined : String(failure)
        m.apply('sync-stop', {reason: this.engine.stopped && !why ? 'the sync was interrupted' : `the sync stopped: ${why ?? 'unknown error'}`})
        // The record is saved whatever else failed: never a sync left recorded as running.
        await g.refreshFingerprints().catch((error: unknown) => {
          failure ??= error
        })
        await g.save()
      }
    }
    return {
      clone: m.name,
      operationId: this.operationId,
      completed,
      alreadySynchronized: false,
      compared: this.compared,
      totalExtents: this.engine.progress.totalExtents,
      copiedBytes: this.engine.progress.copiedBytes,
      skippedBytes: this.engine.progress.skippedBytes,
      collisions: g.collisions.collisions - this.collisionsBefore,
      elapsedMs: Math.round(monotonicMs() - this.startedAt),
    }
  }
}
