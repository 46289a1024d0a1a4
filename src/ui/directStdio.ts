/**
 * process.stdout and process.stderr, when they are a pipe, a socket (what Node's and many
 * supervisors' "pipe" stdio is) or a regular file, as blocking writes to the descriptor, the
 * way a C tool's stdio writes them.
 *
 * Why: Node makes a piped stdout a net.Socket, and a file one a SyncWriteStream; either loads
 * node:stream (and node:net for a pipe) at the first touch of process.stdout, which oclif makes
 * when it loads (its screen width and its action's saved write functions). That was ~2.8 ms of
 * every command run from a script or a cron job, a twentieth of a `status`. clonectl writes a
 * few KiB of results and progress lines; nothing of a stream is needed for that.
 *
 * What it keeps of Node's behaviour:
 * - Every write is whole and in order when write() returns (a short write is continued), so
 *   nothing is lost at exit: stricter than a pipe socket, which may still hold queued bytes.
 * - EPIPE (the reader went away, `clonectl status | head -1`): the stream is broken, this
 *   write and later ones are dropped, and 'error' is emitted on the next tick to whoever
 *   listens, as a pipe socket emits it; oclif's listener ignores EPIPE on stdout, and a
 *   writer's callback is called without an error (Node's console reads a stream's private
 *   state when one is passed).
 * - Any other error (EIO, ENOSPC on a file, EBADF) is thrown by write(), as Node's own stdout
 *   to a file does.
 * - EAGAIN: a descriptor another program made non-blocking, and full. Waiting for it here would
 *   need poll(2); instead the rest of that write, and every later one, go through the stream
 *   Node would have made, in order.
 *
 * Terminals, character devices (/dev/null) and anything else keep Node's streams: a
 * terminal's width, colours and spinners need tty.WriteStream.
 */
import {EventEmitter} from 'node:events'
import {fstatSync, writeSync} from 'node:fs'
import {errnoOf} from '../errors/errors.js'

type WriteCallback = (error?: Error | null) => void
type Stdio = 'stdout' | 'stderr'

/** A stdout or stderr that writes to its descriptor with writeSync. See the module comment. */
export class DirectStdio extends EventEmitter {
  readonly writable = true
  /** Set once EAGAIN was met: every write goes to Node's stream from then on. */
  private fallback?: NodeJS.WritableStream
  /** Set once the reader went away (EPIPE): writes are dropped. */
  private broken = false

  constructor(
    readonly fd: number,
    /** Node's own stream for this descriptor, made only if EAGAIN asks for it. */
    private readonly nodeStream: () => NodeJS.WritableStream,
    private readonly writeFd: (fd: number, data: Uint8Array, offset: number, length: number) => number = writeSync,
  ) {
    super()
  }

  /** Writes on a terminal need Node's tty stream; this is never one. */
  get isTTY(): false {
    return false
  }

  write(chunk: string | Uint8Array, encoding?: BufferEncoding | WriteCallback, cb?: WriteCallback): boolean {
    const callback = typeof encoding === 'function' ? encoding : cb
    const data = typeof chunk === 'string' ? Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8') : chunk
    if (this.fallback) return this.fallback.write(data, callback)
    if (this.broken) {
      if (callback) process.nextTick(callback, null)
      return true
    }
    let done = 0
    while (done < data.byteLength) {
      try {
        done += this.writeFd(this.fd, data, done, data.byteLength - done)
      } catch (error) {
        const code = errnoOf(error)
        // A signal's handler ran mid-write (libuv's are SA_RESTART, so this is a safeguard): again.
        if (code === 'EINTR') continue
        if (code === 'EAGAIN') return this.fallBack(data.subarray(done), callback)
        if (code === 'EPIPE') {
          this.broken = true
          process.nextTick(() => {
            callback?.(null)
            if (this.listenerCount('error') > 0) this.emit('error', error)
          })
          return true
        }
        throw error
      }
    }
    if (callback) process.nextTick(callback, null)
    return true
  }

  /** Nothing is buffered here: end() only says so, for a caller that waits for 'finish'. */
  end(cb?: () => void): this {
    if (this.fallback) this.fallback.end(cb)
    else
      process.nextTick(() => {
        cb?.()
        this.emit('finish')
      })
    return this
  }

  private fallBack(rest: Uint8Array, callback?: WriteCallback): boolean {
    const stream = this.nodeStream()
    this.fallback = stream
    // Those who wait on this object (oclif's flush waits for 'drain') hear the stream.
    stream.on('drain', () => this.emit('drain'))
    stream.on('error', (error: unknown) => {
      if (this.listenerCount('error') > 0) this.emit('error', error)
    })
    return stream.write(rest, callback)
  }
}

/**
 * Put a DirectStdio in place of process.stdout and process.stderr where each is a pipe, a
 * socket or a regular file. Must run before anything touches them (scripts/bundleEntry.cjs
 * calls it before oclif loads). Node's getter is kept for the EAGAIN fallback.
 */
export function installDirectStdio(): void {
  for (const [name, fd] of [
    ['stdout', 1],
    ['stderr', 2],
  ] as Array<[Stdio, number]>) {
    let direct: boolean
    try {
      const s = fstatSync(fd)
      direct = s.isFIFO() || s.isSocket() || s.isFile()
    } catch {
      direct = false // closed or unusable: Node's stream decides what that means
    }
    const node = Object.getOwnPropertyDescriptor(process, name)
    if (!direct || !node?.get || !node.configurable) continue
    const nodeGetter = node.get
    const stream = new DirectStdio(fd, () => nodeGetter.call(process) as NodeJS.WritableStream)
    Object.defineProperty(process, name, {configurable: true, enumerable: node.enumerable, get: () => stream})
  }
}
