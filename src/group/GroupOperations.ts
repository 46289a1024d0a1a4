import {InterruptedError, JobCancelledError, RemoteError, StateError, UsageError} from '../errors/errors.js'
import {ForwardSync, type SyncSummary} from '../engine/ForwardSync.js'
import {RestoreSession, type RestoreSummary, restoreWhichFix} from '../engine/Restore.js'
import type {SyncProgress} from '../engine/SyncEngine.js'
import {askGroupServer} from '../control/ControlClient.js'
import type {CloneRecord} from '../store/GroupRecord.js'
import {type CloneGroup, type GroupContext} from './CloneGroup.js'
import {addClone, type AddCloneOptions, fractureClones, type FractureResult, removeClone} from './GroupAdmin.js'
import {withGroup} from './GroupSession.js'
import {type JobHandle, openJobSocket} from './JobControl.js'
import {assertVerified, verifyClone, type VerifyReport} from './Verify.js'

/** Progress of a running copy, for the UI to draw (bar on a TTY, plain lines otherwise). */
export interface ProgressEvent {
  operation: 'sync' | 'restore' | 'verify'
  group: string
  clone: string
  totalBytes: number
  doneBytes: number
  remainingExtents: number
  codCopies?: number
  paused?: boolean
  rate?: number
}

export interface RunOptions {
  command: string
  waitSeconds?: number
  signal?: AbortSignal
  onProgress?: (p: ProgressEvent) => void
  progressIntervalMs?: number
}

function ticker(fn: () => void, ms: number): () => void {
  const t = setInterval(fn, ms)
  t.unref()
  return () => {
    clearInterval(t)
    fn()
  }
}

function progressBytes(p: SyncProgress, extentSize: number): {total: number; done: number} {
  const total = p.totalExtents * extentSize
  return {total, done: Math.max(0, total - p.remainingExtents * extentSize)}
}

export interface SyncCloneOptions extends RunOptions {
  clone: string
  full?: boolean
  rate?: number
}

/**
 * `clone sync`: copy source → clone what its delta map says, under the group lock. Stops
 * cleanly on the signal: the clone is then out-of-sync with its map intact, and the error
 * says how to go on. Waits.
 */
export async function syncClone(ctx: GroupContext, group: string, o: SyncCloneOptions): Promise<SyncSummary> {
  const served = await askGroupServer<SyncSummary>(ctx, group, {op: 'sync', clone: o.clone, full: o.full, rate: o.rate}, o)
  if (served) return served.value
  const abort = new AbortController()
  o.signal?.addEventListener('abort', () => abort.abort(o.signal?.reason))
  return withGroup(ctx, group, {command: o.command, waitSeconds: o.waitSeconds, abort}, (g) => runForwardSync(g, o, abort.signal))
}

/** The sync itself, on a group already open under its lock. */
async function runForwardSync(g: CloneGroup, o: SyncCloneOptions, signal: AbortSignal): Promise<SyncSummary> {
  const group = g.name
  const started = await ForwardSync.start(g, {clone: o.clone, full: o.full, rate: o.rate, command: o.command})
  if (!(started instanceof ForwardSync)) return started
  const stopOnAbort = (): void => started.stop()
  signal.addEventListener('abort', stopOnAbort)
  if (signal.aborted) started.stop()
  const progress = (): ProgressEvent => {
    const b = progressBytes(started.progress, g.extentSize)
    return {operation: 'sync', group, clone: o.clone, totalBytes: b.total, doneBytes: b.done, remainingExtents: started.progress.remainingExtents, paused: started.engine.isPaused, rate: started.limiter.rate}
  }
  const stopTicker = ticker(() => o.onProgress?.(progress()), o.progressIntervalMs ?? 500)
  let job: JobHandle | undefined
  // `clonectl job` from another shell reaches this foreground sync through the group's job socket.
  const closeJobSocket = openJobSocket(g, () => job)
  try {
    const running = started.run()
    job = {kind: 'sync', clone: o.clone, done: running, pause: () => started.engine.pause(), resume: () => started.engine.resume(), paused: () => started.engine.isPaused, setRate: (r) => started.limiter.setRate(r), stop: () => started.stop(), progress}
    const summary = await running
    if (!summary.completed && job.cancelled)
      throw new JobCancelledError(`sync of clone ${o.clone} was cancelled by \`clonectl job cancel ${group}\`; the clone is out-of-sync and its map intact`, `run \`clonectl clone sync ${group} ${o.clone}\` to copy only what is left`)
    if (!summary.completed && signal.aborted)
      throw new InterruptedError(`sync of clone ${o.clone} was interrupted; the clone is out-of-sync and its map intact`, `run \`clonectl clone sync ${group} ${o.clone}\` to copy only what is left`)
    return summary
  } finally {
    await closeJobSocket()
    stopTicker()
    signal.removeEventListener('abort', stopOnAbort)
  }
}

/**
 * `clone add` and its first sync. Offline both run in one session, so a freshly created
 * sparse image is known to read as zero and zero extents are never written to it.
 */
export async function addAndSync(ctx: GroupContext, group: string, a: AddCloneOptions, o: Omit<SyncCloneOptions, 'clone'>): Promise<{clone: CloneRecord; sync: SyncSummary}> {
  const served = await askGroupServer<CloneRecord>(ctx, group, {op: 'add', clone: a.clone, path: a.path, create: a.create})
  if (served) return {clone: served.value, sync: await syncClone(ctx, group, {...o, clone: a.clone})}
  const abort = new AbortController()
  o.signal?.addEventListener('abort', () => abort.abort(o.signal?.reason))
  return withGroup(ctx, group, {command: o.command, waitSeconds: o.waitSeconds, abort}, async (g) => {
    const clone = await addClone(g, a)
    return {clone, sync: await runForwardSync(g, {...o, clone: a.clone}, abort.signal)}
  })
}

export interface RestoreOptions extends RunOptions {
  /** Optional when resuming an interrupted restore. */
  clone?: string
  unprotected?: boolean
  force?: boolean
  rate?: number
  /** How long to wait for a remote clone that stopped answering (default 60 s). */
  remoteWaitSeconds?: number
  /** Under serve: close the connections of NBD clients instead of refusing while they are attached. */
  disconnectClients?: boolean
}

/**
 * `restore`: start a restore of the source from a clone, or resume the interrupted one, and
 * run it to the end. On the signal it stops at a safe point with everything durable; the
 * restore stays recorded and the next `restore GROUP` resumes it. Waits.
 */
export async function restoreSource(ctx: GroupContext, group: string, o: RestoreOptions): Promise<RestoreSummary> {
  const served = await askGroupServer<RestoreSummary>(ctx, group, {op: 'restore', clone: o.clone, unprotected: o.unprotected, force: o.force, rate: o.rate, disconnectClients: o.disconnectClients}, o)
  if (served) return served.value
  const record = await ctx.store.load(group)
  const op = record.operation?.kind === 'restore' ? record.operation : undefined
  if (op && o.clone && o.clone !== op.clone)
    throw new StateError(`group ${group} has an interrupted restore from clone ${op.clone}, not ${o.clone}`, `resume it with \`clonectl restore ${group}\``)
  if (!op && !o.clone) throw new UsageError(`group ${group} has no interrupted restore to resume`, restoreWhichFix(group, record.clones.map((c) => c.name)))
  const clone = op?.clone ?? (o.clone as string)
  const isProtected = op ? op.protected !== false : !o.unprotected
  const abort = new AbortController()
  o.signal?.addEventListener('abort', () => abort.abort(o.signal?.reason))
  return withGroup(
    ctx,
    group,
    {command: o.command, waitSeconds: o.waitSeconds, abort, open: {writable: true, readOnlyClones: isProtected ? [clone] : []}},
    async (g) => {
      const session = op
        ? await RestoreSession.resume(g, {rate: o.rate, forceLostP: o.force})
        : await RestoreSession.start(g, {clone, protected: isProtected, force: o.force, rate: o.rate, command: o.command})
      if (o.remoteWaitSeconds !== undefined) session.remoteWaitMs = o.remoteWaitSeconds * 1000
      session.onRemoteWait = (error, retryInMs) => ctx.warn?.(`restore paused: ${error.message}; retrying in ${(retryInMs / 1000).toFixed(1)} s`)
      const stopOnAbort = (): void => session.stop()
      abort.signal.addEventListener('abort', stopOnAbort)
      if (abort.signal.aborted) session.stop()
      const progress = (): ProgressEvent => {
        const b = progressBytes(session.progress, g.extentSize)
        return {operation: 'restore', group, clone, totalBytes: b.total, doneBytes: b.done, remainingExtents: session.progress.remainingExtents, codCopies: session.cod.copies, paused: session.engine.isPaused, rate: session.limiter.rate}
      }
      const stopTicker = ticker(() => o.onProgress?.(progress()), o.progressIntervalMs ?? 500)
      let job: JobHandle | undefined
      // `clonectl job` from another shell reaches this foreground restore through the group's job socket.
      const closeJobSocket = openJobSocket(g, () => job)
      try {
        const running = session.run()
        job = {kind: 'restore', clone, done: running, pause: () => session.engine.pause(), resume: () => session.engine.resume(), paused: () => session.engine.isPaused, setRate: (r) => session.limiter.setRate(r), stop: () => session.stop(), progress}
        const done = await running
        if (done) {
          await session.finish()
          return session.summary(true)
        }
        // A cancelled protected restore cannot be abandoned half-way: it stays recorded, as an interrupted one.
        await session.suspend()
        if (job.cancelled)
          throw new JobCancelledError(`restore of group ${group} from clone ${clone} was cancelled by \`clonectl job cancel ${group}\` with ${session.remaining()} extents left; it stays recorded and nothing is lost`, `run \`clonectl restore ${group}\` to resume it`)
        throw new InterruptedError(`restore of group ${group} from clone ${clone} was interrupted with ${session.remaining()} extents left; nothing is lost`, `run \`clonectl restore ${group}\` to resume it`)
      } catch (error) {
        if (!(error instanceof RemoteError)) throw error
        // The remote clone stayed away longer than we wait: keep the progress, stay recorded.
        await session.suspend().catch(() => undefined)
        throw new RemoteError(`restore of group ${group} paused: ${error.message}`, error.reason, `the restore is recorded with ${session.remaining()} extents left; run \`clonectl restore ${group}\` once the remote answers`, error.errno)
      } finally {
        await closeJobSocket()
        stopTicker()
        abort.signal.removeEventListener('abort', stopOnAbort)
      }
    },
  )
}

export interface AdminOptions {
  command: string
  waitSeconds?: number
}

/** `clone fracture`, offline or through the server (atomic w.r.t. in-flight host writes). */
export async function fracture(ctx: GroupContext, group: string, clones: string[], o: AdminOptions): Promise<FractureResult[]> {
  const served = await askGroupServer<FractureResult[]>(ctx, group, {op: 'fracture', clones})
  if (served) return served.value
  return withGroup(ctx, group, {command: o.command, waitSeconds: o.waitSeconds}, (g) => fractureClones(g, clones))
}

/** `clone add` (without its first sync), offline or through the server. */
export async function add(ctx: GroupContext, group: string, a: AddCloneOptions, o: AdminOptions): Promise<CloneRecord> {
  const served = await askGroupServer<CloneRecord>(ctx, group, {op: 'add', clone: a.clone, path: a.path, create: a.create})
  if (served) return served.value
  return withGroup(ctx, group, {command: o.command, waitSeconds: o.waitSeconds}, (g) => addClone(g, a))
}

/** `clone remove`, offline or through the server. The clone's volume is never touched. */
export async function remove(ctx: GroupContext, group: string, clone: string, o: AdminOptions): Promise<{clone: string; path: string}> {
  const served = await askGroupServer<{clone: string; path: string}>(ctx, group, {op: 'remove', clone})
  if (served) return served.value
  return withGroup(ctx, group, {command: o.command, waitSeconds: o.waitSeconds, open: {writable: true, volumes: false}}, (g) => removeClone(g, clone))
}

/** `verify`: compare source and clone against the delta map; VerifyMismatchError on a violation. */
export async function verify(ctx: GroupContext, group: string, clone: string, o: AdminOptions & {repair?: boolean; signal?: AbortSignal; onProgress?: (p: ProgressEvent) => void}): Promise<VerifyReport> {
  const served = await askGroupServer<VerifyReport>(ctx, group, {op: 'verify', clone, repair: o.repair})
  const report =
    served?.value ??
    (await withGroup(ctx, group, {command: o.command, waitSeconds: o.waitSeconds}, (g) =>
      verifyClone(g, clone, {
        repair: o.repair,
        signal: o.signal,
        onProgress: (done, total) => o.onProgress?.({operation: 'verify', group, clone, totalBytes: total * g.extentSize, doneBytes: done * g.extentSize, remainingExtents: total - done}),
      }),
    ))
  assertVerified(report)
  return report
}

