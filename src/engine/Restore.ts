import {CorruptStateError, RemoteError, StateError} from '../errors/errors.js'
import {randomUuid} from '../io/randomId.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {EXTENTS_PER_PAGE} from '../map/PersistentMap.js'
import type {OperationRecord} from '../store/GroupRecord.js'
import {stateWriteError} from '../store/stateDir.js'
import {CodEngine} from './CodEngine.js'
import {CodQueue} from './CodQueue.js'
import type {EngineGroup, EngineMember} from './EngineGroup.js'
import {protectedMapFile} from './GroupMaps.js'
import {coversWhole} from './extents.js'
import type {ProtectedRestoreMap} from './ProtectedRestoreMap.js'
import {RateLimiter} from './RateLimiter.js'
import {SyncEngine, type SyncProgress} from './SyncEngine.js'

/** The fix for a restore with no clone named: the command with this group's real clones. */
export function restoreWhichFix(group: string, clones: string[]): string {
  if (clones.length === 0) return `group ${group} has no clone to restore from; add one first (\`clonectl clone add ${group} CLONE --path PATH\`)`
  if (clones.length === 1) return `name the clone to restore from: \`clonectl restore ${group} ${clones[0]}\``
  return `name the clone to restore from: \`clonectl restore ${group} CLONE\`, CLONE one of ${clones.join(', ')}`
}

export interface RestoreOptions {
  clone: string
  /** Protected (default): the clone is never written; host writes land in P. */
  protected: boolean
  /** Restore from an out-of-sync or untrusted clone anyway (compare and copy every extent). */
  force?: boolean
  rate?: number
  command: string
  /** Copy granularity (tests use one extent, to interleave finely with host I/O). */
  tuning?: RestoreTuning
}

export interface RestoreTuning {
  chunkBytes?: number
  parallel?: number
}

export interface RestoreSummary {
  operationId: string
  clone: string
  protected: boolean
  resumed: boolean
  completed: boolean
  compared: boolean
  totalExtents: number
  copiedBytes: number
  skippedBytes: number
  codCopies: number
  codBytes: number
  collisions: number
  hostWrittenExtents: number
}

/**
 * A restore of the source from clone c (DESIGN §4): the sync engine copies clone → source
 * every extent in D[c] (skipping P), the COD engine copies ahead what host requests wait for,
 * and host I/O is routed through beforeRead/beforeWrite/afterWrite.
 *
 * Protected: clone c is opened read-only and never written (INV-3); host writes set P.
 * Unprotected (the seeds' regular reverse sync): host writes are mirrored to c and the
 * collision detector makes a copy that overlapped a host write run again.
 */
export class RestoreSession {
  readonly queue: CodQueue
  readonly cod: CodEngine
  readonly engine: SyncEngine
  readonly limiter: RateLimiter
  private finished = false
  /**
   * Extents whose pre-restore data host writes in flight replace whole, with their number of
   * writers (see beforeWrite). INV-2 for reads: such an extent holds pre-restore data until
   * the write lands, though P (set before the write) says "no copy", so a read waits for it.
   */
  private readonly overwriting = new Map<number, number>()

  private constructor(
    readonly g: EngineGroup,
    readonly member: EngineMember,
    readonly P: ProtectedRestoreMap | undefined,
    readonly operationId: string,
    readonly isProtected: boolean,
    readonly resumed: boolean,
    readonly compared: boolean,
    rate?: number,
    tuning: RestoreTuning = {},
  ) {
    const D = member.map
    const needsCopy = P ? (e: number) => D.bits.get(e) && !P.bits.get(e) : (e: number) => D.bits.get(e)
    // A host request may proceed once its extents need no copy, none is being copied, and none
    // still holds pre-restore data that a host write in flight is replacing.
    this.queue = new CodQueue((e) => !needsCopy(e) && !g.scoreboard.has(e) && !this.overwriting.has(e))
    this.limiter = new RateLimiter(rate)
    const onWrite = (): void => g.noteWritten(g.src)
    this.cod = new CodEngine({
      queue: this.queue,
      scoreboard: g.scoreboard,
      map: D,
      from: member.vol,
      to: g.src,
      extentSize: g.extentSize,
      volumeSize: g.volumeSize,
      needsCopy,
      collisions: P ? undefined : g.collisions,
      onWrite,
      onError: (err) => this.queue.failAll(err instanceof Error ? err : new Error(String(err))),
    })
    this.engine = new SyncEngine({
      map: D,
      from: member.vol,
      to: g.src,
      extentSize: g.extentSize,
      volumeSize: g.volumeSize,
      scoreboard: g.scoreboard,
      skip: P ? () => P.bits : undefined,
      collisions: P ? undefined : g.collisions,
      compare: compared,
      limiter: this.limiter,
      chunkBytes: tuning.chunkBytes,
      parallel: tuning.parallel,
      // On every release, failed copies included: a waiter whose extent the failed chunk
      // held is served by COD (or gets its error) instead of hanging (recipe 3, host read).
      onReleased: () => {
        this.queue.wake()
        this.cod.kick()
      },
      checkpoint: () => g.checkpoint(),
      onWrite,
    })
  }

  /**
   * Start a new restore from clone `opts.clone`. Everything the crash invariants depend on is
   * durable before the first copy: other clones fractured and their maps widened, an empty P
   * created, the operation recorded. Run inside the host gate (no host write in flight).
   */
  static async start(g: EngineGroup, opts: RestoreOptions): Promise<RestoreSession> {
    if (g.record.operation)
      throw new StateError(
        `group ${g.name} has an interrupted ${g.record.operation.kind} of clone ${g.record.operation.clone}`,
        g.record.operation.kind === 'restore' ? `resume it with \`clonectl restore ${g.name}\`` : `run \`clonectl clone sync ${g.name} ${g.record.operation.clone}\``,
      )
    const c = g.member(opts.clone)
    c.requireAvailable()
    const untrusted = !c.record.trusted
    // A changed source is no reason to refuse (every extent is compared); a changed clone is.
    const cloneChanged = untrusted && c.record.untrustedReason !== 'source-changed'
    if (c.state === 'out-of-sync' || c.state === 'synchronizing') {
      if (!opts.force)
        throw new StateError(
          `clone ${c.name} is ${c.state}: it is an incomplete copy, not a point in time to restore from`,
          `sync it first (\`clonectl clone sync ${g.name} ${c.name}\`), or pass --force to restore from it anyway`,
        )
    }
    if (cloneChanged && !opts.force)
      throw new StateError(
        `clone ${c.name} (${c.record.volume.path}) changed outside clonectl, so its delta map cannot be trusted`,
        'pass --force to compare and copy every extent from it',
      )
    const compare = untrusted || c.state === 'out-of-sync' || c.state === 'synchronizing' || g.changedOutside.has('(source)')
    if (g.changedOutside.has('(source)')) g.ctx.warn?.(`the source changed outside clonectl: comparing and copying every extent`)

    // No host write is in flight: idle write-intent bits are equal data, not extents to copy.
    for (const m of g.members.values()) m.sweepIntent(0, true)
    const undo = g.snapshotForUndo()
    // Fracture every other mirrored clone: the source is about to change under them.
    const now = new Date().toISOString()
    for (const m of g.members.values()) {
      if (m === c) continue
      if (m.state === 'synchronized') m.apply('fracture', {at: now})
    }
    // Pending clears must be durable-safe before maps are rewritten whole.
    await g.checkpoint()
    if (compare) {
      const all = new ExtentBitmap(g.extentCount)
      all.setAll()
      await c.map.replaceAll(all)
    }
    // D[k] |= D[c] for every other clone: the source will change wherever D[c] is set.
    for (const m of g.members.values()) {
      if (m === c) continue
      const widened = m.map.bits.clone()
      widened.or(c.map.bits)
      if (!widened.equals(m.map.bits)) await m.map.replaceAll(widened)
    }
    const operationId = randomUuid()
    let P: ProtectedRestoreMap | undefined
    if (opts.protected) {
      P = await g.maps.createP(operationId).catch((error: unknown) => {
        undo()
        throw stateWriteError(g.ctx.store.stateDir, g.maps.path(protectedMapFile), error)
      })
    }
    const operation: OperationRecord = {
      id: operationId,
      kind: 'restore',
      clone: c.name,
      protected: opts.protected,
      startedAt: now,
      command: opts.command,
      pid: process.pid,
      totalExtents: c.map.bits.countSet(),
      compare,
    }
    c.apply(opts.protected ? 'restore-start' : 'reverse-sync-start', {operation})
    try {
      await g.save()
    } catch (error) {
      // Not recorded (a full state file system): not started, in memory either; P without
      // a recorded restore is a leftover, removed now rather than at the next open.
      undo()
      if (P) await g.maps.deleteP(P).catch(() => undefined)
      throw error
    }
    g.maps.p = P
    return new RestoreSession(g, c, P, operationId, opts.protected, false, compare, opts.rate, opts.tuning)
  }

  /**
   * Resume the restore recorded in group.json: load D[c] and P from disk and go on. A bit
   * still set in D[c] for an extent already copied is harmless: P decides (DESIGN §4).
   */
  static async resume(g: EngineGroup, opts: {rate?: number; forceLostP?: boolean; tuning?: RestoreTuning}): Promise<RestoreSession> {
    const op = g.record.operation
    if (!op || op.kind !== 'restore') throw new StateError(`group ${g.name} has no interrupted restore`, restoreWhichFix(g.name, [...g.members.keys()]))
    const c = g.member(op.clone)
    // The restore stays recorded: resumed once the clone is back.
    c.requireAvailable()
    let P: ProtectedRestoreMap | undefined
    if (op.protected) {
      try {
        P = await g.maps.openP(op.id)
      } catch (error) {
        if (!opts.forceLostP)
          throw error instanceof CorruptStateError
            ? new CorruptStateError(
                error.message,
                `without P, host writes made during the restore cannot be told apart: \`clonectl restore ${g.name} --force\` resumes, copying from the clone again every extent whose P bit is lost (host writes made to those extents during the restore are overwritten)`,
              )
            : error
        P = await RestoreSession.recoverP(g, c, op.id, error)
      }
    }
    op.pid = process.pid
    await g.save()
    g.maps.p = P
    return new RestoreSession(g, c, P, op.id, op.protected ?? true, true, op.compare ?? false, opts.rate, opts.tuning)
  }

  /**
   * restore --force over a P that cannot be read whole. Pages of P that failed their check
   * (the rest of P intact) read as clear: their extents are marked in D[c] durably first
   * (INV-1: a difference there is then covered by D[c], not by a P bit about to be dropped),
   * then those pages are rewritten; only host writes to those extents are overwritten. A
   * P that cannot be opened at all is replaced by an empty one and every extent is copied.
   */
  private static async recoverP(g: EngineGroup, c: EngineMember, operationId: string, cause: unknown): Promise<ProtectedRestoreMap> {
    let P: ProtectedRestoreMap | undefined
    try {
      P = await g.maps.openP(operationId, {damaged: 'clear'})
    } catch {
      // Not only pages: the whole map is lost.
    }
    if (P && P.damagedPages.length > 0) {
      g.ctx.warn?.(P.damageReport() ?? '')
      // INV-1: D[c] covers these extents durably before their P bits are durably dropped.
      for (const page of P.damagedPages) {
        await c.map.setDurable(page * EXTENTS_PER_PAGE, Math.min(g.extentCount, (page + 1) * EXTENTS_PER_PAGE))
      }
      await P.repairDamagedPages()
      return P
    }
    await P?.close()
    g.ctx.warn?.(`protected restore map lost (${(cause as Error).message}); copying every extent from clone ${c.name} again`)
    P = await g.maps.createP(operationId)
    const all = new ExtentBitmap(g.extentCount)
    all.setAll()
    await c.map.replaceAll(all)
    return P
  }

  /** Extents still to restore (D[c] ∧ ¬P). */
  remaining(): number {
    return this.engine.remaining()
  }

  get progress(): SyncProgress {
    return this.engine.progress
  }

  /**
   * Host read of extents [s, e): every extent that still needs a copy is copied first (COD),
   * or waited for if a copy is under way. Then the caller reads the source. Waits.
   */
  async beforeRead(s: number, e: number): Promise<void> {
    if (this.finished) return
    const ext: number[] = []
    for (let x = s; x < e; x++) ext.push(x)
    const wait = this.queue.waitFor(ext)
    this.cod.kick()
    await wait
  }

  /**
   * Host write of bytes [offset, offset+length) covering extents [s, e) — recipe 3. Waits for
   * copies of those extents in S; copies a partly covered extent first when it still needs
   * it (a wholly covered one needs no COD); then, with no await between the last check and
   * the set, sets P in memory so nothing copies over the host's data. Waits.
   */
  async beforeWrite(offset: number, length: number, s: number, e: number): Promise<number[] | undefined> {
    if (this.finished) return undefined
    const {g, P} = this
    const D = this.member.map
    if (!P) return undefined // unprotected: mirrored to the clone; the collision detector handles overlap
    for (;;) {
      const busy = g.scoreboard.firstBusy(s, e)
      if (busy >= 0) {
        await g.scoreboard.waitFor(busy)
        continue
      }
      const need: number[] = []
      for (const x of s === e - 1 ? [s] : [s, e - 1])
        if (!coversWhole(offset, length, x, g.extentSize, g.volumeSize) && D.bits.get(x) && !P.bits.get(x)) need.push(x)
      if (need.length > 0) {
        const wait = this.queue.waitFor(need)
        this.cod.kick()
        await wait
        continue
      }
      break
    }
    // Extents still holding pre-restore data (wholly covered, so not copied first): until the
    // write lands, a read of them must wait for it rather than read the old bytes (INV-2).
    const replaced: number[] = []
    for (let x = s; x < e; x++) {
      if (!D.bits.get(x) || P.bits.get(x)) continue
      replaced.push(x)
      this.overwriting.set(x, (this.overwriting.get(x) ?? 0) + 1)
    }
    // INV-2 / recipe 3: protect in memory before the data write; durable only after it.
    P.setVolatile(s, e)
    return replaced
  }

  /** The write that beforeWrite() returned `replaced` for has settled (done or failed): reads of those extents go on. */
  writeSettled(replaced: number[]): void {
    for (const x of replaced) {
      const n = (this.overwriting.get(x) ?? 1) - 1
      if (n > 0) this.overwriting.set(x, n)
      else this.overwriting.delete(x)
    }
    this.queue.wake()
  }

  /** The host's data write to [s, e) completed: its P bits may become durable (recipe 3). */
  afterWrite(s: number, e: number): void {
    this.P?.stage(s, e)
  }

  /**
   * How long the background copy waits for a remote clone that stopped answering before
   * run() gives up with its RemoteError (the restore stays recorded; `restore G` resumes
   * it). The CLI bounds it; `serve` waits for ever, since hosts are served meanwhile.
   */
  remoteWaitMs = 60_000
  /** Told each time the copy pauses for the remote (for stderr). */
  onRemoteWait?: (error: RemoteError, retryInMs: number) => void

  /**
   * Copy until done or stopped; true when every extent is restored (call finish() then).
   * A remote clone that vanishes pauses the copy — COD reads fail cleanly meanwhile (EIO to
   * the host, never wrong data) — and the copy goes on when it is back. Waits.
   */
  async run(): Promise<boolean> {
    let waitingSince: number | undefined
    let progressAtFailure = -1
    let backoff = 250
    for (;;) {
      try {
        return await this.engine.run()
      } catch (error) {
        if (!(error instanceof RemoteError) || this.member.vol.kind !== 'nbd') throw error
        const progress = this.engine.progress.copiedBytes + this.engine.progress.skippedBytes
        if (progress !== progressAtFailure) {
          // It answered for a while since the last failure: a new outage.
          waitingSince = Date.now()
          progressAtFailure = progress
          backoff = 250
        }
        const waited = Date.now() - (waitingSince ?? Date.now())
        if (waited >= this.remoteWaitMs) throw error
        const pause = Math.min(backoff, this.remoteWaitMs - waited)
        this.onRemoteWait?.(error, pause)
        await this.sleepUnlessStopped(pause)
        if (this.engine.stopped) return false
        backoff = Math.min(backoff * 2, 5000)
      }
    }
  }

  private sleepUnlessStopped(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const start = Date.now()
      const tick = (): void => {
        if (this.engine.stopped || Date.now() - start >= ms) resolve()
        else setTimeout(tick, Math.min(100, ms))
      }
      tick()
    })
  }

  stop(): void {
    this.engine.stop()
  }

  /**
   * End of the restore (DESIGN §4 "end"): fdatasync the source, D[c] := P, drop P, clone c
   * fractured (protected; bit-identical to before) or synchronized (unprotected). Every step
   * is idempotent, so a crash anywhere here resumes into the same end. Run inside the host
   * gate.
   */
  async finish(): Promise<void> {
    const {g, P, member: c} = this
    await g.checkpoint()
    if (P) {
      // D[c] ∧ ¬P is empty now, and every host write set both, so D[c] = P: make it exact.
      await c.map.replaceAll(P.bits.clone())
      c.apply('restore-done')
      // Compared whole, D[c] is exact again.
      c.record.trusted = true
      delete c.record.untrustedReason
    } else {
      c.apply('reverse-sync-done')
      c.record.trusted = true
      delete c.record.untrustedReason
    }
    await g.refreshFingerprints()
    await g.save()
    this.finished = true
    g.maps.p = undefined
    if (P) await g.maps.deleteP(P)
    this.queue.wake()
  }

  /** An interrupted restore: make progress durable and leave the operation recorded. */
  async suspend(): Promise<void> {
    await this.g.checkpoint()
    this.queue.failAll(new StateError('the restore was stopped'))
  }

  summary(completed: boolean): RestoreSummary {
    return {
      operationId: this.operationId,
      clone: this.member.name,
      protected: this.isProtected,
      resumed: this.resumed,
      completed,
      compared: this.compared,
      totalExtents: this.engine.progress.totalExtents,
      copiedBytes: this.engine.progress.copiedBytes + this.cod.copiedBytes,
      skippedBytes: this.engine.progress.skippedBytes,
      codCopies: this.cod.copies,
      codBytes: this.cod.copiedBytes,
      collisions: this.g.collisions.collisions,
      hostWrittenExtents: this.P ? this.P.bits.countSet() : 0,
    }
  }
}
