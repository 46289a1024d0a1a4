import {join} from 'node:path'
import {ControlServer} from '../control/ControlServer.js'
import type {ControlMessage, ControlRequest} from '../control/protocol.js'
import {controlSocketName} from '../control/protocol.js'
import {InterruptedError, JobCancelledError, RefusedError, StateError, UsageError} from '../errors/errors.js'
import {EXTENTS_PER_PAGE} from '../map/PersistentMap.js'
import {ForwardSync, type SyncSummary} from '../engine/ForwardSync.js'
import {HostIO} from '../engine/HostIO.js'
import {ExportStatus} from './exportStatus.js'
import {RestoreSession, type RestoreSummary, restoreWhichFix} from '../engine/Restore.js'
import type {SyncProgress} from '../engine/SyncEngine.js'
import {NbdServer, type NbdServerOptions} from '../nbd/NbdServer.js'
import {GroupLock} from '../store/GroupLock.js'
import {openVolume} from '../volume/openVolume.js'
import type {Volume} from '../volume/Volume.js'
import {CloneGroup, type GroupContext} from './CloneGroup.js'
import {addClone, exportDescription, fractureClones, recoverStale, removeClone} from './GroupAdmin.js'
import type {ProgressEvent} from './GroupOperations.js'
import {groupStatus} from './GroupStatus.js'
import {controlJob, type JobHandle, jobInfo, withLiveJob} from './JobControl.js'
import {drillCopy} from './Drill.js'
import {verifyClone} from './Verify.js'
import {humanBytes, humanDuration} from '../ui/format.js'
import {servingHosts} from '../io/loopPolicy.js'

/** A background job's progress goes to the journal at every 10 % step, and at least this often. */
const JOURNAL_EVERY_MS = 60_000
/** How often a running job's progress is looked at for the journal. */
const JOURNAL_POLL_MS = 1000

export interface ServeOptions {
  command: string
  /** Unix socket path for NBD (default: nbd.sock in the group directory). */
  socket?: string
  /** TCP address, only when the user names one; the unix socket stays unless `tcpOnly`. */
  listen?: {host: string; port: number}
  /** With `listen`: serve NBD on TCP only, no unix socket (the control socket stays). */
  tcpOnly?: boolean
  readOnly?: boolean
  /** NBD_OPT_STARTTLS on every NBD listener (options from loadServerTls); `required` refuses plaintext clients. */
  tls?: NbdServerOptions['tls']
  /** Copy rate (bytes/s) for a restore resumed at start (default unlimited). */
  rate?: number
  /** NBD limits under load: payload budget, connection cap, payload time-out (NbdServer defaults). */
  limits?: Pick<NbdServerOptions, 'maxBufferBytes' | 'maxConnections' | 'payloadTimeoutMs'>
  log?: (message: string) => void
}

type Background = JobHandle

/** What `clonectl restore` asks of serve (resume: no clone). */
interface RestoreRequest {
  clone?: string
  unprotected?: boolean
  force?: boolean
  rate?: number
  disconnectClients?: boolean
}

/**
 * The same volume through a new handle (read-only for a protected restore: INV-3; writable
 * again after it). A remote clone is closed first: NBD servers commonly take one client at a
 * time (qemu-nbd's default --shared=1), so a second connection would wait for the first.
 */
async function reopenVolume(g: CloneGroup, old: Volume, rec: {path: string; fingerprint: {size: number}}, write: boolean): Promise<Volume> {
  const open = (): Promise<Volume> => openVolume(g.ctx.fs, rec.path, {write, knownSize: rec.fingerprint.size})
  if (old.kind === 'nbd') {
    await old.close()
    return open()
  }
  const next = await open()
  await old.close()
  return next
}

/** The group's recorded restore is protected (the default). */
function isProtectedOp(g: CloneGroup): boolean {
  const op = g.record.operation
  return !(op?.kind === 'restore' && op.protected === false)
}

/**
 * `clonectl serve GROUP`: owns the group while it runs (DESIGN §5). It holds the lock, serves
 * the source over NBD through the host I/O path, answers the control socket (other
 * invocations' sync, fracture, restore, status...), runs one copy operation at a time in the
 * background, and on start resumes an interrupted restore while serving at once.
 */
export class GroupServer {
  readonly nbd: NbdServer
  readonly control: ControlServer
  private bg?: Background
  /** The clone a drill is copying from (read while hosts are served; nothing may change it). */
  private drilling?: string
  nbdSocket?: string
  tcpPort?: number
  private stopping = false

  private constructor(
    readonly ctx: GroupContext,
    readonly g: CloneGroup,
    readonly host: HostIO,
    private readonly lock: GroupLock,
    private readonly opts: ServeOptions,
  ) {
    this.nbd = new NbdServer(host, {...opts.limits, exportName: '', description: exportDescription(g.record), log: opts.log, tls: opts.tls, metaContexts: new ExportStatus(host)})
    this.control = new ControlServer((req, send, cancelled) => this.handle(req, send, cancelled))
  }

  static async start(ctx: GroupContext, name: string, opts: ServeOptions): Promise<GroupServer> {
    // Host requests share this event loop from now on: no state-file call may hold it (src/io/loopPolicy.ts).
    servingHosts()
    const record = await ctx.store.load(name)
    const op = record.operation
    let lost: Error | undefined
    const lock = await GroupLock.acquire({
      groupDir: ctx.store.groupDir(name),
      group: name,
      command: opts.command,
      onCompromised: (err) => {
        lost = err
        opts.log?.(`lost the group lock (${err.message}); stopping`)
        void server?.stop()
      },
      onStaleTakeover: (h) => ctx.warn?.(`took over the lock of group ${name} left by pid ${h.pid} (${h.command}), which is no longer running`),
    })
    let server: GroupServer | undefined
    try {
      const readOnlyClones = op?.kind === 'restore' && op.protected !== false ? [op.clone] : []
      const g = await CloneGroup.open(ctx, name, {writable: true, readOnlyClones})
      await recoverStale(g)
      await g.beginSession(opts.command)
      const host = new HostIO(g, {readOnly: opts.readOnly, onMirrorFailure: (c, err) => opts.log?.(`group ${name}: clone ${c} fractured: a mirrored write failed: ${err.message} (host writes go on; \`clonectl clone sync ${name} ${c}\` brings it back)`)})
      server = new GroupServer(ctx, g, host, lock, opts)
      const dir = ctx.store.groupDir(name)
      await server.control.listen(join(dir, controlSocketName))
      if (opts.listen) server.tcpPort = await server.nbd.listenTcp(opts.listen.host, opts.listen.port)
      if (opts.tcpOnly && !opts.listen) throw new UsageError('serving NBD on TCP only needs a TCP address', 'pass --listen HOST:PORT, or leave out --tcp-only')
      if (!opts.tcpOnly) {
        server.nbdSocket = opts.socket ?? join(dir, 'nbd.sock')
        await server.nbd.listenUnix(server.nbdSocket)
      }
      // Boot-time recovery: resume an interrupted restore in the background, serving at once.
      if (g.record.operation?.kind === 'restore') await server.startRestore({rate: opts.rate}, true)
      if (lost) throw lost
      return server
    } catch (error) {
      await server?.control.close().catch(() => undefined)
      await server?.nbd.close().catch(() => undefined)
      await server?.g.close().catch(() => undefined)
      await lock.release().catch(() => undefined)
      throw error
    }
  }

  get operation(): Background | undefined {
    return this.bg
  }

  private progressOf(kind: 'sync' | 'restore', clone: string, p: SyncProgress, extra: Partial<ProgressEvent> = {}): ProgressEvent {
    const total = p.totalExtents * this.g.extentSize
    return {operation: kind, group: this.g.name, clone, totalBytes: total, doneBytes: Math.max(0, total - p.remainingExtents * this.g.extentSize), remainingExtents: p.remainingExtents, ...extra}
  }

  /**
   * The operation being started: from its busy() check until this.bg is set, its record is
   * saved and (a restore) its session set up, with awaits between. A second request arriving
   * then used to pass busy() too, and both ran (a sync beside a restore; one record replacing
   * the other's).
   */
  private starting?: {kind: 'sync' | 'restore'; clone: string}

  /** The running operation, or the one starting. */
  private get occupied(): {kind: 'sync' | 'restore'; clone: string} | undefined {
    return this.bg ?? this.starting
  }

  private busy(): void {
    const op = this.occupied
    if (op) throw new StateError(`group ${this.g.name} is already ${this.bg ? 'running' : 'starting'} a ${op.kind} of clone ${op.clone}`, `watch it with \`clonectl status ${this.g.name}\`, or wait for it to finish`)
    if (this.drilling) throw new StateError(`group ${this.g.name} is running a drill of clone ${this.drilling}`, 'wait for the drill to finish, then run the command again')
  }

  /** Start a forward sync in the background. Resolves once it has started. */
  async startSync(req: {clone: string; full?: boolean; rate?: number}): Promise<{done: Promise<SyncSummary>}> {
    return this.whileStarting({kind: 'sync', clone: req.clone}, () => this.beginSync(req))
  }

  /** Refuse when busy, else run `begin` with the operation marked as starting until it returns. */
  private async whileStarting<T>(what: {kind: 'sync' | 'restore'; clone: string}, begin: () => Promise<T>): Promise<T> {
    this.busy()
    this.starting = what
    try {
      return await begin()
    } finally {
      this.starting = undefined
    }
  }

  private async beginSync(req: {clone: string; full?: boolean; rate?: number}): Promise<{done: Promise<SyncSummary>}> {
    const started = await ForwardSync.start(this.g, {clone: req.clone, full: req.full, rate: req.rate, command: `${this.opts.command} (sync)`, gate: this.host.gate})
    if (!(started instanceof ForwardSync)) return {done: Promise.resolve(started)}
    const what = `sync of clone ${req.clone}`
    const endJournal = this.journalProgress(what, () => this.progressOf('sync', req.clone, started.progress))
    const done = started.run().then(
      (r) => {
        this.log(r.completed ? `${what} finished: ${humanBytes(r.copiedBytes)} copied` : `${what} stopped, ${this.percent(this.progressOf('sync', req.clone, started.progress))} done; \`clonectl clone sync ${this.g.name} ${req.clone}\` goes on from there`)
        return r
      },
      (error: unknown) => {
        this.log(`${what} failed: ${(error as Error).message}`)
        throw error
      },
    ).finally(() => {
      endJournal()
      this.bg = undefined
    })
    this.log(`${what} started`)
    this.bg = {
      kind: 'sync',
      clone: req.clone,
      done,
      stop: () => started.stop(),
      pause: () => started.engine.pause(),
      resume: () => started.engine.resume(),
      paused: () => started.engine.isPaused,
      setRate: (r) => started.limiter.setRate(r),
      progress: () => this.progressOf('sync', req.clone, started.progress, {paused: started.engine.isPaused, rate: started.limiter.rate}),
    }
    return {done}
  }

  /** Start (or resume) a restore in the background; host I/O is routed through it at once. */
  async startRestore(req: RestoreRequest, resume = false): Promise<{done: Promise<RestoreSummary>}> {
    return this.whileStarting({kind: 'restore', clone: req.clone ?? this.g.record.operation?.clone ?? '?'}, () => this.beginRestore(req, resume))
  }

  private async beginRestore(req: RestoreRequest, resume: boolean): Promise<{done: Promise<RestoreSummary>}> {
    const {g, host} = this
    const op = g.record.operation
    let session: RestoreSession
    if (op?.kind === 'restore' && host.restore && host.restore.operationId === op.id) {
      // Stopped earlier in this process (cancel): the same session goes on; COD never stopped.
      session = host.restore
      session.engine.restart()
      if (req.rate !== undefined) session.limiter.setRate(req.rate)
    } else if (op?.kind === 'restore') {
      if (req.clone && req.clone !== op.clone) throw new StateError(`group ${g.name} has an interrupted restore from clone ${op.clone}, not ${req.clone}`, `resume it with \`clonectl restore ${g.name}\``)
      session = await host.gate.exclusive(async () => {
        const s = await RestoreSession.resume(g, {rate: req.rate, forceLostP: req.force})
        // Installed before the gate opens: the writes held at it must follow recipe 3 (INV-2).
        host.restore = s
        return s
      })
    } else {
      if (resume) throw new StateError('no restore to resume')
      if (!req.clone) throw new UsageError(`group ${g.name} has no interrupted restore to resume`, restoreWhichFix(g.name, [...g.members.keys()]))
      const clone = req.clone
      const isProtected = !req.unprotected
      // The switch: from here hosts see the clone's data. A host attached now may cache the
      // old source (a page cache under nbdfuse + losetup) and would corrupt what it mounts.
      // Resumed restores switched when they started; clients attached since see the restore.
      if (req.disconnectClients) await this.nbd.disconnectClients()
      else this.refuseAttachedClients(clone)
      session = await host.gate.exclusive(async () => {
        // Host I/O is quiesced here: a client that attached in the meantime is the last to decide.
        if (req.disconnectClients) this.nbd.killClients('disconnected for a restore (--disconnect-clients)')
        else this.refuseAttachedClients(clone)
        const m = g.member(clone)
        // INV-3: the restore clone is read through a read-only handle from here on.
        if (isProtected && m.volume && !m.volume.readOnly) m.volume = await reopenVolume(g, m.volume, m.record.volume, false)
        const s = await RestoreSession.start(g, {clone, protected: isProtected, force: req.force, rate: req.rate, command: `${this.opts.command} (restore)`})
        // INV-2 and INV-4: installed before the gate opens. A host write held at the gate while
        // the restore was set up must set P (or the copy overwrites it with the clone's extent),
        // and a read must copy on demand first.
        host.restore = s
        return s
      })
    }
    if (this.stopping) {
      // stop() began while this restore was being set up: leave it recorded for the next start
      // (host I/O keeps going through the session's copy on demand until the server closes).
      await session.suspend()
      throw new InterruptedError(`clonectl serve of group ${g.name} is stopping`, `the restore is recorded; it resumes when \`clonectl serve ${g.name}\` starts again`)
    }
    // Hosts are served meanwhile: wait for a vanished remote clone for as long as it takes.
    session.remoteWaitMs = Number.POSITIVE_INFINITY
    session.onRemoteWait = (error, retryInMs) => this.log(`restore paused (from clone ${session.member.name}): ${error.message}; retrying in ${(retryInMs / 1000).toFixed(1)} s (host reads of extents not yet restored get EIO meanwhile)`)
    const clone = session.member.name
    const what = `restore from clone ${clone}`
    const progress = (): ProgressEvent => this.progressOf('restore', clone, session.progress)
    if (op?.kind === 'restore') {
      const p = progress()
      // What its last checkpoint recorded as still to copy (copies since then are done again).
      this.log(`resuming the interrupted ${what}: ${humanBytes(p.totalBytes - p.doneBytes)} left to copy (hosts are served meanwhile)`)
    } else this.log(`${what} started${isProtectedOp(g) ? '' : ' (unprotected)'}`)
    const endJournal = this.journalProgress(what, progress)
    const t0 = Date.now()
    const done = (async () => {
      try {
        const complete = await session.run()
        if (!complete) {
          // Progress durable; host I/O keeps going through the session's COD meanwhile.
          await g.checkpoint()
          if (this.stopping) await session.suspend()
          this.log(`${what} stopped, ${this.percent(progress())} done; it resumes when \`clonectl restore ${g.name}\` runs or serve starts again`)
          return session.summary(false)
        }
        await host.gate.exclusive(async () => {
          await session.finish()
          host.restore = undefined
          // The clone may be mirrored again later: give it back a writable handle.
          const m = g.member(clone)
          if (m.volume?.readOnly) m.volume = await reopenVolume(g, m.volume, m.record.volume, true)
        })
        const sum = session.summary(true)
        this.log(`${what} finished: the source now holds the clone's data (${humanBytes(sum.copiedBytes)} copied in ${humanDuration(Date.now() - t0)})`)
        return sum
      } catch (error) {
        this.log(`${what} failed: ${(error as Error).message}`)
        throw error
      } finally {
        endJournal()
        this.bg = undefined
      }
    })()
    this.bg = {
      kind: 'restore',
      clone,
      done,
      stop: () => session.stop(),
      pause: () => session.engine.pause(),
      resume: () => session.engine.resume(),
      paused: () => session.engine.isPaused,
      setRate: (r) => session.limiter.setRate(r),
      progress: () => this.progressOf('restore', clone, session.progress, {codCopies: session.cod.copies, paused: session.engine.isPaused, rate: session.limiter.rate}),
    }
    return {done}
  }

  /** One journal line (stderr under systemd), naming the group. */
  private log(message: string): void {
    this.opts.log?.(`group ${this.g.name}: ${message}`)
  }

  private percent(p: ProgressEvent): string {
    return `${p.totalBytes > 0 ? Math.floor((p.doneBytes / p.totalBytes) * 100) : 100} %`
  }

  /**
   * Progress of a background job in the journal: a line at every 10 % step it passes, and at
   * least every JOURNAL_EVERY_MS. Returns the function that ends it.
   */
  private journalProgress(what: string, progress: () => ProgressEvent): () => void {
    let step = Math.floor((progress().doneBytes / Math.max(1, progress().totalBytes)) * 10)
    let last = Date.now()
    let lastDone = progress().doneBytes
    const t = setInterval(() => {
      const p = progress()
      const now = Date.now()
      const s = Math.floor((p.doneBytes / Math.max(1, p.totalBytes)) * 10)
      if (s <= step && now - last < JOURNAL_EVERY_MS) return
      if (p.doneBytes >= p.totalBytes) return // the finish line says it
      const rate = ((p.doneBytes - lastDone) / Math.max(1, now - last)) * 1000
      this.log(`${what}: ${this.percent(p)} (${humanBytes(p.doneBytes)} of ${humanBytes(p.totalBytes)}), ${humanBytes(Math.max(0, rate))}/s${this.bg?.paused() ? ', paused' : ''}`)
      step = s
      last = now
      lastDone = p.doneBytes
    }, JOURNAL_POLL_MS)
    t.unref()
    return () => clearInterval(t)
  }

  /** RefusedError naming every attached NBD client, when there is one. */
  private refuseAttachedClients(clone: string): void {
    const clients = this.nbd.attachedClients()
    if (clients.length === 0) return
    const who = clients.map((c) => `${c.peer} since ${c.since.toISOString()}`).join(', ')
    throw new RefusedError(
      `restore of group ${this.g.name} from clone ${clone} refused: ${clients.length} NBD client${clients.length === 1 ? ' is' : 's are'} connected (${who}); a host that caches the source would keep reading the old data`,
      'on each host unmount the file system and detach the device (umount, losetup -d, fusermount3 -u / nbd-client -d), run the restore, then reattach; or pass --disconnect-clients to close their connections first',
    )
  }

  /** Wait for a background operation, streaming its progress; a disconnect stops it. */
  private async follow<T>(done: Promise<T>, send: (m: ControlMessage) => void, cancelled: AbortSignal, background?: boolean): Promise<T | {started: true}> {
    if (background) return {started: true}
    const bg = this.bg
    const onCancel = (): void => bg?.stop()
    cancelled.addEventListener('abort', onCancel)
    const t = setInterval(() => {
      if (bg) send({type: 'progress', progress: bg.progress()})
    }, 500)
    try {
      const out = await done
      if (bg?.cancelled)
        throw new JobCancelledError(
          bg.kind === 'restore'
            ? `restore of group ${this.g.name} from clone ${bg.clone} was cancelled by \`clonectl job cancel ${this.g.name}\`; it stays recorded, hosts keep being served, and nothing is lost`
            : `sync of clone ${bg.clone} was cancelled by \`clonectl job cancel ${this.g.name}\`; the clone is out-of-sync and its map intact`,
          bg.kind === 'restore' ? `run \`clonectl restore ${this.g.name}\` to resume it` : `run \`clonectl clone sync ${this.g.name} ${bg.clone}\` to copy only what is left`,
        )
      return out
    } finally {
      clearInterval(t)
      cancelled.removeEventListener('abort', onCancel)
    }
  }

  /** One control request from another invocation. */
  async handle(req: ControlRequest, send: (m: ControlMessage) => void, cancelled: AbortSignal): Promise<unknown> {
    const {g, host} = this
    // A request racing with stop() must not start work on a group being closed.
    if (this.stopping && req.op !== 'ping') throw new InterruptedError(`clonectl serve of group ${g.name} is stopping`, 'run the command again once it has stopped (or after it restarts)')
    // A clone image deleted under us is noticed before anything is reported or started.
    if (req.op !== 'ping') await host.gate.exclusive(() => g.noticeVanishedVolumes())
    switch (req.op) {
      case 'ping':
        return {pid: process.pid, group: g.name}
      case 'status': {
        // Counts on disk: idle write-intent bits are equal data, not differences to show.
        for (const m of g.members.values()) m.sweepIntent(0, true)
        await g.checkpoint()
        let s = await groupStatus(this.ctx, g.name)
        // A job's start is saved before this.bg is set, its end before this.bg is cleared:
        // group.json read while one of them was being saved disagrees with this.bg (status
        // showed a live job with no recorded operation). Read it again, once.
        const bg = this.bg
        if (Boolean(bg) !== Boolean(s.operation) || (bg && s.operation && (bg.kind !== s.operation.kind || bg.clone !== s.operation.clone))) s = await groupStatus(this.ctx, g.name)
        for (const c of s.clones) {
          const member = g.members.get(c.name)
          if (!member) continue
          // This process is the authority on its clones: what it does now (a clone it stopped
          // mirroring after a failure whose save failed too) wins over group.json.
          if (member.state !== c.state) {
            c.state = member.state
            c.stateReason = member.record.stateReason
          }
          // The server repaired damaged map pages when it opened them: the disk no longer shows
          // what it found, so report it from the open maps, while those extents are still to copy.
          const m = member.map
          const damage = m.damageReport()
          if (!damage || c.damagedMapPages) continue
          const left = m.damagedPages.filter((p) => m.bits.anySet(p * EXTENTS_PER_PAGE, Math.min(m.bits.count, (p + 1) * EXTENTS_PER_PAGE)))
          if (left.length > 0) Object.assign(c, {damagedMapPages: left, mapDamage: damage})
        }
        if (this.bg) withLiveJob(s, jobInfo(g.name, this.bg, 'serve'))
        // A restore recorded with nothing copying for it (cancelled with `job cancel`) waits for `restore GROUP`.
        else if (s.operation) s.operation.state = 'interrupted'
        return {...s, server: {pid: process.pid, nbdSocket: this.nbdSocket, tcpPort: this.tcpPort, connections: this.nbd.connections, payloadBytes: this.nbd.budget.used + this.nbd.budget.reserveUsed, memoryHandBacks: this.nbd.handBacks, operation: this.bg ? this.bg.progress() : undefined}}
      }
      case 'sync': {
        const {done} = await this.startSync(req)
        return this.follow(done, send, cancelled, req.background)
      }
      case 'restore': {
        const {done} = await this.startRestore(req)
        return this.follow(done, send, cancelled, req.background)
      }
      case 'fracture':
        return host.gate.exclusive(async () => fractureClones(g, req.clones))
      case 'add':
        if (this.occupied) this.busy()
        return host.gate.exclusive(async () => addClone(g, req))
      case 'remove':
        if (this.occupied?.clone === req.clone || this.drilling === req.clone) this.busy()
        return host.gate.exclusive(async () => removeClone(g, req.clone))
      case 'verify':
        if (this.occupied) this.busy()
        return host.gate.exclusive(async () => verifyClone(g, req.clone, {repair: req.repair}))
      case 'job':
      case 'pause':
      case 'resume':
      case 'rate':
      case 'cancel':
        return controlJob(g.name, this.bg, req, 'serve')
      case 'drill': {
        // Reads the clone while hosts are served: it must be one nobody writes meanwhile.
        this.busy()
        const m = g.member(req.clone)
        if (m.state === 'synchronized' || m.state === 'synchronizing')
          throw new StateError(
            `clone ${m.name} of group ${g.name} is ${m.state}: serve mirrors host writes to it, so a drill would not copy one point in time`,
            `fracture it first (\`clonectl clone fracture ${g.name} ${m.name}\`), then run the drill again`,
          )
        this.drilling = m.name
        try {
          return await drillCopy(g, {clone: req.clone, target: req.target, force: req.force, log: (message) => send({type: 'log', message})})
        } finally {
          this.drilling = undefined
        }
      }
      default:
        throw new UsageError(`unknown control request ${(req as {op: string}).op}`)
    }
  }

  /**
   * Stop: no new connections, the background operation stopped at a safe point (a restore
   * stays recorded and resumes at the next start), NBD drained and flushed, state saved,
   * lock released. Waits. Safe to call twice.
   */
  async stop(): Promise<void> {
    if (this.stopping) return
    this.stopping = true
    await this.control.close().catch(() => undefined)
    const bg = this.bg
    bg?.stop()
    await bg?.done.catch(() => undefined)
    await this.nbd.close().catch(() => undefined)
    await this.g.close().catch((error: unknown) => this.opts.log?.(`closing the group: ${(error as Error).message}`))
    await this.lock.release().catch(() => undefined)
  }
}
