// fs.promises, read at each call: node:fs/promises loads on first use (see NodeDurableFs).
import {promises as fsp} from 'node:fs'
import type {Server, Socket} from 'node:net'
import {listenPrivate} from '../io/privateSocket.js'
import {ClonectlError, isClonectlError, UsageError} from '../errors/errors.js'
import {checkControlRequest, type ControlMessage, type ControlRequest} from './protocol.js'

const fixForRequests = 'send one JSON object per line as clonectl does (DESIGN §5); use the clonectl commands rather than writing to the control socket'

/** Handles one request; `send` streams progress; the resolved value is the result. */
export type ControlHandler = (req: ControlRequest, send: (m: ControlMessage) => void, cancelled: AbortSignal) => Promise<unknown>

/**
 * The server side of the control socket: one JSON request per connection, progress lines,
 * one result line. A client that disconnects early aborts its request's signal (a
 * foreground sync stops, as Ctrl-C would stop it offline).
 */
export class ControlServer {
  private server?: Server
  private readonly sockets = new Set<Socket>()

  constructor(private readonly handler: ControlHandler) {}

  /**
   * Listen on `path` (mode 0600). A socket file left by a server that was killed (SIGKILL,
   * power loss) is replaced when nobody answers on it; one that answers is EADDRINUSE.
   * The caller holds the group lock, so a live one means a bug elsewhere, never a race.
   */
  async listen(path: string): Promise<void> {
    // node:net on first use: the commands that only import this (status, through JobControl) never listen.
    const {connect, createServer} = await import('node:net')
    // No file, nobody listening: a connect attempt costs a socket's set-up and teardown
    // (about 2 ms at every job's start), for an answer lstat gives.
    const present = await fsp.lstat(path).then(
      () => true,
      () => false,
    )
    const live = present && await new Promise<boolean>((resolve) => {
      const c = connect(path)
      c.once('connect', () => {
        c.destroy()
        resolve(true)
      })
      c.once('error', () => resolve(false))
    })
    if (live) throw Object.assign(new Error(`${path} is in use by a running server`), {code: 'EADDRINUSE'})
    if (present) await fsp.rm(path, {force: true})
    const server = createServer((s) => this.accept(s))
    this.server = server
    await listenPrivate(server, path)
  }

  private accept(s: Socket): void {
    this.sockets.add(s)
    const abort = new AbortController()
    let buf = ''
    let started = false
    const send = (m: ControlMessage): void => {
      if (!s.destroyed) s.write(`${JSON.stringify(m)}\n`)
    }
    s.on('close', () => {
      this.sockets.delete(s)
      abort.abort(new Error('client disconnected'))
    })
    s.on('error', () => undefined)
    s.on('data', (chunk) => {
      if (started) return
      buf += chunk.toString('utf8')
      if (buf.length > 1 << 20) s.destroy()
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      started = true
      let req: ControlRequest
      try {
        const checked = checkControlRequest(JSON.parse(buf.slice(0, nl)))
        if ('problem' in checked) throw new UsageError(checked.problem, fixForRequests)
        req = checked
      } catch (error) {
        const message = error instanceof UsageError ? error.message : `control request is not JSON: ${(error as Error).message}`
        send({type: 'result', ok: false, error: {code: 'USAGE', exitCode: 2, message, fix: fixForRequests}})
        s.end()
        return
      }
      this.handler(req, send, abort.signal)
        .then((value) => send({type: 'result', ok: true, value: value ?? null}))
        .catch((error: unknown) => {
          const e = isClonectlError(error) ? error : new ClonectlError('BUG', 'bug', error instanceof Error ? error.stack ?? error.message : String(error))
          send({type: 'result', ok: false, error: {code: e.code, exitCode: e.exitCode, message: e.message, fix: e.fix}})
        })
        .finally(() => s.end())
    })
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()))
  }
}
