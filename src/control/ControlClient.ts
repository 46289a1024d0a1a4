import {basename, dirname, join} from 'node:path'
import {ClonectlError, type ExitCodeName, ExitCode, InterruptedError, ServerStoppedError} from '../errors/errors.js'
import type {GroupContext} from '../group/CloneGroup.js'
import type {ProgressEvent} from '../group/GroupOperations.js'
import type {DurableFs} from '../io/DurableFs.js'
import {type ControlMessage, type ControlRequest, controlSocketName} from './protocol.js'

/** An expected error that happened inside the server, carried back with its code and exit status. */
export class RemoteClonectlError extends ClonectlError {
  constructor(code: string, exitCode: number, message: string, fix?: string) {
    const name = (Object.keys(ExitCode) as ExitCodeName[]).find((k) => ExitCode[k] === exitCode) ?? 'bug'
    super(code, name, message, fix)
  }
}

/**
 * Send one request to the `serve` process that owns a group, streaming its progress to
 * onProgress; resolves with the result, or throws the server's error with the same code and
 * exit status the command would have had offline. `signal` aborts by disconnecting.
 */
export async function controlRequest<T>(socketPath: string, req: ControlRequest, opts: {onProgress?: (p: unknown) => void; onLog?: (m: string) => void; signal?: AbortSignal} = {}): Promise<T> {
  // node:net on first use: a status or sync with no server running never connects, and loading it cost every start.
  const {connect} = await import('node:net')
  return new Promise<T>((resolve, reject) => {
    const s = connect(socketPath)
    let buf = ''
    let done = false
    const finish = (fn: () => void): void => {
      if (done) return
      done = true
      s.destroy()
      fn()
    }
    opts.signal?.addEventListener('abort', () => finish(() => reject(opts.signal?.reason ?? new Error('aborted'))))
    s.on('connect', () => s.write(`${JSON.stringify(req)}\n`))
    s.on('error', (err) => finish(() => reject(err)))
    s.on('data', (chunk) => {
      buf += chunk.toString('utf8')
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let m: ControlMessage
        try {
          m = JSON.parse(line) as ControlMessage
        } catch {
          continue
        }
        if (m.type === 'progress') opts.onProgress?.(m.progress)
        else if (m.type === 'log') opts.onLog?.(m.message)
        else if (m.ok) finish(() => resolve(m.value as T))
        else {
          const e = m.error
          // The server was interrupted (it is stopping), not this command: exit 12, never 130.
          if (e.code === 'INTERRUPTED') finish(() => reject(new ServerStoppedError(e.message, e.fix)))
          else finish(() => reject(new RemoteClonectlError(e.code, e.exitCode, e.message, e.fix)))
        }
      }
    })
    // The server stopped (SIGTERM, a crash) while working for us: what it did is durable and
    // an interrupted restore stays recorded, so this is not a bug; nor a signal to us (not 130).
    s.on('close', () => finish(() => reject(new ServerStoppedError('the clonectl serve process owning this group stopped before it answered', `check \`clonectl status ${basename(dirname(socketPath))}\`, then run the command again (an interrupted restore resumes when serve starts again)`))))
  })
}

/** The control socket of a group's running server, or undefined when none answers. */
export async function findServer(fs: DurableFs, groupDir: string): Promise<string | undefined> {
  const path = join(groupDir, controlSocketName)
  if (!(await fs.exists(path))) return undefined
  try {
    await controlRequest(path, {op: 'ping'})
    return path
  } catch {
    return undefined
  }
}

/**
 * When a `serve` process owns the group, send it the request (DESIGN §5: same output and
 * exit code as offline, progress streamed back); otherwise undefined and the caller runs it
 * in its own process.
 */
export async function askGroupServer<T>(ctx: GroupContext, group: string, req: ControlRequest, o: {onProgress?: (p: ProgressEvent) => void; signal?: AbortSignal} = {}): Promise<{value: T} | undefined> {
  await ctx.store.load(group)
  const sock = await findServer(ctx.fs, ctx.store.groupDir(group))
  if (!sock) return undefined
  try {
    const value = await controlRequest<T>(sock, req, {onProgress: (p) => o.onProgress?.(p as ProgressEvent), onLog: (m) => ctx.warn?.(m), signal: o.signal})
    return {value}
  } catch (error) {
    if (o.signal?.aborted) throw new InterruptedError(`the ${req.op} was interrupted; the server stopped it at a safe point`, `run the command again to go on`)
    throw error
  }
}
