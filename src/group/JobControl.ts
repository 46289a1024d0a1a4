/**
 * Job control (issue 18 item 1): pause, resume, re-rate or cancel a running sync or restore
 * from another shell. A job runs either under `serve` (which answers on its control socket)
 * or as a foreground `clone sync` / `restore` without serve, which listens on a private
 * socket of its own (job.sock in the group directory) for as long as it runs. Both answer the
 * same requests (op job, pause, resume, rate, cancel) through controlJob, so `clonectl job`
 * and `status` see the same thing either way.
 *
 * Cancel stops the copy at a safe point; it never undoes one. A cancelled sync leaves the
 * clone out-of-sync with its map intact. A cancelled protected restore cannot be abandoned
 * (the source is part restored): it stays recorded, as an interrupted one, hosts under serve
 * go on reading and writing it with copy on demand, and `clonectl restore GROUP` resumes it.
 */
import {join} from 'node:path'
import {controlRequest, RemoteClonectlError} from '../control/ControlClient.js'
import {ControlServer} from '../control/ControlServer.js'
import {type ControlRequest, controlSocketName} from '../control/protocol.js'
import {StateError, UsageError} from '../errors/errors.js'
import type {CloneGroup, GroupContext} from './CloneGroup.js'
import type {ProgressEvent} from './GroupOperations.js'
import type {GroupStatus} from './GroupStatus.js'

/** The socket a foreground sync or restore listens on for `clonectl job` (mode 0600, in the group directory). */
export const jobSocketName = 'job.sock'

export type JobRequest = Extract<ControlRequest, {op: 'job' | 'pause' | 'resume' | 'rate' | 'cancel'}>

/** A running copy that another shell may pause, resume, re-rate or cancel. */
export interface JobHandle {
  kind: 'sync' | 'restore'
  clone: string
  /** Settles when the job's run ends (complete, stopped or failed). */
  done: Promise<unknown>
  /** Resolves once the job copies nothing any more (the chunks already issued are done). */
  pause: () => Promise<void>
  resume: () => void
  paused: () => boolean
  /** Bytes per second; undefined or 0: unlimited. */
  setRate: (rate?: number) => void
  stop: () => void
  progress: () => ProgressEvent
  /** Set by `job cancel`: whoever waits on the job reports it cancelled, not finished. */
  cancelled?: boolean
}

/** What `clonectl job` reports of a running job (also its --json). */
export interface JobInfo {
  group: string
  kind: 'sync' | 'restore'
  clone: string
  /** serve: the job runs inside `clonectl serve`; foreground: in the command that started it. */
  runner: 'serve' | 'foreground'
  pid: number
  state: 'running' | 'paused' | 'cancelled'
  /** Bytes per second; absent: unlimited. */
  rate?: number
  totalBytes: number
  doneBytes: number
  remainingExtents: number
  percentDone: number
  /** Extents copied on demand for host I/O (a restore under serve). */
  codCopies?: number
}

export function jobInfo(group: string, job: JobHandle, runner: JobInfo['runner']): JobInfo {
  const p = job.progress()
  const rate = p.rate && p.rate > 0 ? p.rate : undefined
  return {
    group,
    kind: job.kind,
    clone: job.clone,
    runner,
    pid: process.pid,
    state: job.cancelled ? 'cancelled' : job.paused() ? 'paused' : 'running',
    ...(rate === undefined ? {} : {rate}),
    totalBytes: p.totalBytes,
    doneBytes: p.doneBytes,
    remainingExtents: p.remainingExtents,
    percentDone: p.totalBytes > 0 ? Math.floor((1000 * p.doneBytes) / p.totalBytes) / 10 : 100,
    ...(p.codCopies === undefined ? {} : {codCopies: p.codCopies}),
  }
}

/**
 * Carry out one job request on the job this process runs (undefined: none). `job` answers
 * null when there is none; the others refuse with a StateError. Pause waits until the job
 * copies nothing; cancel asks it to stop at a safe point and does not wait for the end (the
 * command running the job reports that). Does not run alongside another pause of the same job.
 */
export async function controlJob(group: string, job: JobHandle | undefined, req: JobRequest, runner: JobInfo['runner']): Promise<JobInfo | null> {
  if (!job) {
    if (req.op === 'job') return null
    throw new StateError(`group ${group} has no sync or restore running to ${req.op}`, `see \`clonectl status ${group}\`; an interrupted restore resumes with \`clonectl restore ${group}\``)
  }
  if (job.cancelled && req.op !== 'job') throw new StateError(`the ${job.kind} of clone ${job.clone} in group ${group} is already cancelled and stopping`, `wait for it to stop, then see \`clonectl status ${group}\``)
  switch (req.op) {
    case 'pause':
      // The job may end before it parks (its last chunk was in flight): then it is simply done.
      await Promise.race([job.pause(), job.done.then(() => undefined, () => undefined)])
      break
    case 'resume':
      job.resume()
      break
    case 'rate':
      job.setRate(req.rate)
      break
    case 'cancel':
      job.cancelled = true
      job.stop()
      break
    default:
      break
  }
  return jobInfo(group, job, runner)
}

/**
 * Listen on the group's job socket for a foreground job (no serve), answering job requests
 * about `current()` (undefined until the job has started). Returns at once and listens in the
 * background: a job's copy does not wait for node:net and the socket's set-up (~2.5 ms of
 * every sync's start), and `clonectl job` finds the socket a moment later. The close function
 * waits for the listen to settle, then removes the socket, so none outlives the job. A socket
 * left by a killed foreground job is replaced; one that cannot be made is warned about and
 * the job goes on (only `clonectl job` needs it). The caller holds the group lock.
 */
export function openJobSocket(g: CloneGroup, current: () => JobHandle | undefined): () => Promise<void> {
  const server = new ControlServer(async (req) => {
    switch (req.op) {
      case 'ping':
        return {pid: process.pid, group: g.name}
      case 'job':
      case 'pause':
      case 'resume':
      case 'rate':
      case 'cancel':
        return controlJob(g.name, current(), req, 'foreground')
      default:
        throw new UsageError(`the job socket of group ${g.name} answers job requests only, not ${req.op}`, 'use the clonectl commands; a foreground job holds the group lock until it ends')
    }
  })
  const path = join(g.ctx.store.groupDir(g.name), jobSocketName)
  const listening = server.listen(path).then(
    () => true,
    (error: unknown) => {
      g.ctx.warn?.(`group ${g.name}: cannot listen on ${path} (${(error as Error).message}); this job goes on, but \`clonectl job\` cannot pause, re-rate or cancel it`)
      return false
    },
  )
  return async () => {
    if (!(await listening)) return
    await server.close()
    await g.ctx.fs.unlink(path).catch(() => undefined)
  }
}

/**
 * Send a job request to whoever runs the group's job: its `serve` when one answers, else a
 * foreground job's socket. With neither: null for `job`, a StateError for the others. Waits.
 */
export async function jobRequest(ctx: GroupContext, group: string, req: JobRequest): Promise<JobInfo | null> {
  await ctx.store.load(group) // NotFoundError for an unknown group
  const dir = ctx.store.groupDir(group)
  for (const name of [controlSocketName, jobSocketName]) {
    const path = join(dir, name)
    if (!(await ctx.fs.exists(path))) continue
    try {
      return await controlRequest<JobInfo | null>(path, req)
    } catch (error) {
      // An answer is the answer; a socket nobody listens on is one left by a killed process.
      if (error instanceof RemoteClonectlError) throw error
    }
  }
  return controlJob(group, undefined, req, 'foreground')
}

/**
 * The group's status with the live state of its running job laid over it: paused, rate, and
 * progress as the job counts it (the maps on disk lag until the next checkpoint).
 */
export function withLiveJob(s: GroupStatus, j: JobInfo | null | undefined): GroupStatus {
  const o = s.operation
  if (!j || !o || o.kind !== j.kind || o.clone !== j.clone) return s
  o.paused = j.state === 'paused'
  if (j.rate === undefined) delete o.rate
  else o.rate = j.rate
  o.remainingExtents = j.remainingExtents
  o.percentDone = j.percentDone
  return s
}

/**
 * The running job of one group, or of every group: those with none are left out. A group
 * that cannot be read is warned about and never hides the others. Waits.
 */
export async function listJobs(ctx: GroupContext, group?: string): Promise<JobInfo[]> {
  if (group) {
    const j = await jobRequest(ctx, group, {op: 'job'})
    return j ? [j] : []
  }
  const out: JobInfo[] = []
  for (const name of await ctx.store.list()) {
    try {
      const j = await jobRequest(ctx, name, {op: 'job'})
      if (j) out.push(j)
    } catch (error) {
      ctx.warn?.(`group ${name}: ${(error as Error).message}`)
    }
  }
  return out
}
