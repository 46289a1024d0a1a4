/**
 * A remote clone as the engines see it: an NbdVolume that reconnects. The network is
 * expected to fail (issue: "failure is expected, not exceptional"), so a dropped connection
 * fails the requests it carried — the caller decides: a sync stops out-of-sync, a mirrored
 * write fractures the clone, a restore pauses — and the next request connects again. A
 * group whose remote clone is down still opens (the clone is then "unreachable" until a
 * request gets through), so the source keeps being served.
 *
 * On every reconnect the export must still be the size it was: a different size means a
 * different volume, and is refused rather than written.
 *
 * A FLUSH covers only the writes of its own connection (the server may have restarted and
 * lost its cache). So when a connection with writes not yet flushed is dropped, the next
 * flush() fails even if a new connection could flush: the caller then treats those writes
 * as lost (the Checkpointer re-marks them, INV-1) instead of trusting them.
 */
import {RemoteError} from '../errors/errors.js'
import {NbdVolume, type NbdVolumeOptions} from './NbdVolume.js'
import type {Fingerprint, Volume, VolumeExtent, VolumeKind} from './Volume.js'

/** Time-outs from the environment (seconds), for every remote clone. */
export function remoteTimeoutsFromEnv(env: NodeJS.ProcessEnv = process.env): NbdVolumeOptions['timeouts'] {
  const seconds = (name: string): number | undefined => {
    const v = env[name]
    if (v === undefined || v === '') return undefined
    const n = Number(v)
    return Number.isFinite(n) && n > 0 ? n * 1000 : undefined
  }
  return {connectMs: seconds('CLONECTL_NBD_CONNECT_TIMEOUT'), requestMs: seconds('CLONECTL_NBD_REQUEST_TIMEOUT')}
}

/** Failures after which the connection is not worth keeping. */
const DROP: ReadonlySet<string> = new Set(['lost', 'timeout', 'closed', 'protocol', 'connect', 'handshake', 'tls'])

export class RemoteVolume implements Volume {
  readonly kind: VolumeKind = 'nbd'
  knownZero = false
  private conn?: NbdVolume
  private connecting?: Promise<NbdVolume>
  /** Writes completed on the current connection, and how many of them a flush covered. */
  private written = 0
  private flushedUpTo = 0
  /** A connection was dropped with writes no flush covered: the next flush must fail. */
  private lostWrites?: RemoteError
  private closed = false
  /** Connections made (1 after open; more after reconnects). */
  connects = 0

  private constructor(
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    private readonly opts: NbdVolumeOptions,
    conn: NbdVolume | undefined,
  ) {
    this.conn = conn
    if (conn) this.connects = 1
  }

  /** Connect now; errors (RemoteError, UsageError for a bad URI) are the caller's. Waits. */
  static async open(uri: string, opts: NbdVolumeOptions): Promise<RemoteVolume> {
    const conn = await NbdVolume.open(uri, {...opts, timeouts: opts.timeouts ?? remoteTimeoutsFromEnv()})
    return new RemoteVolume(uri, conn.size, conn.readOnly, opts, conn)
  }

  /**
   * A remote clone of a known size that may be down: connect if it answers, otherwise
   * return it unconnected (every request tries again). `onDown` is told why. Waits.
   */
  static async openOrDeferred(uri: string, size: number, opts: NbdVolumeOptions, onDown?: (error: RemoteError) => void): Promise<RemoteVolume> {
    try {
      const v = await RemoteVolume.open(uri, opts)
      if (v.size !== size) {
        await v.close()
        throw sizeChanged(uri, size, v.size)
      }
      return v
    } catch (error) {
      if (!(error instanceof RemoteError) || error.reason === 'protocol') throw error
      onDown?.(error)
      return new RemoteVolume(uri, size, !opts.write, opts, undefined)
    }
  }

  /** The export's NBD description at open, if the server sent one. */
  get description(): string | undefined {
    return this.conn?.client.info.description
  }

  /** Connected now (the last request got through, or none failed since). */
  get connected(): boolean {
    return this.conn !== undefined
  }

  private connection(): Promise<NbdVolume> {
    if (this.conn) return Promise.resolve(this.conn)
    if (this.closed) return Promise.reject(new RemoteError(`${this.path} is closed`, 'closed'))
    this.connecting ??= (async () => {
      try {
        const c = await NbdVolume.open(this.path, {...this.opts, timeouts: this.opts.timeouts ?? remoteTimeoutsFromEnv()})
        if (c.size !== this.size) {
          await c.close()
          throw sizeChanged(this.path, this.size, c.size)
        }
        this.connects++
        if (this.closed) {
          await c.close()
          throw new RemoteError(`${this.path} is closed`, 'closed')
        }
        this.conn = c
        return c
      } finally {
        this.connecting = undefined
      }
    })()
    return this.connecting
  }

  /** Run one request; a broken connection is dropped so the next request reconnects. */
  private async run<T>(fn: (c: NbdVolume) => Promise<T>): Promise<T> {
    const c = await this.connection()
    try {
      return await fn(c)
    } catch (error) {
      if (error instanceof RemoteError && DROP.has(error.reason) && this.conn === c) {
        this.conn = undefined
        void c.close().catch(() => undefined)
        if (this.written > this.flushedUpTo) this.lostWrites ??= error
        this.written = 0
        this.flushedUpTo = 0
      }
      throw error
    }
  }

  read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    return this.run((c) => c.read(position, length, into))
  }

  write(position: number, data: Uint8Array): Promise<void> {
    return this.run(async (c) => {
      await c.write(position, data)
      if (this.conn === c) this.written++
    })
  }

  writeZeroes(position: number, length: number, opts: {punch?: boolean} = {}): Promise<void> {
    return this.run(async (c) => {
      await c.writeZeroes(position, length, opts)
      if (this.conn === c) this.written++
    })
  }

  trim(position: number, length: number): Promise<void> {
    return this.writeZeroes(position, length, {punch: true})
  }

  extents(position: number, length: number): Promise<VolumeExtent[]> {
    return this.run((c) => c.extents(position, length))
  }

  async flush(): Promise<void> {
    const lost = this.lostWrites
    if (lost) {
      this.lostWrites = undefined
      throw new RemoteError(`${this.path}: the connection was lost with writes not yet flushed (${lost.message}); they may not have reached the remote's disk`, 'lost', 'the copies are marked to do again; run the sync again once the remote answers')
    }
    await this.run(async (c) => {
      const covers = this.written
      await c.flush()
      if (this.conn === c) this.flushedUpTo = Math.max(this.flushedUpTo, covers)
    })
  }

  async fingerprint(): Promise<Fingerprint> {
    return {kind: 'nbd', size: this.size, uri: this.path}
  }

  async close(): Promise<void> {
    this.closed = true
    const c = this.conn
    this.conn = undefined
    await this.connecting?.catch(() => undefined)
    await c?.close()
  }
}

function sizeChanged(uri: string, was: number, now: number): RemoteError {
  return new RemoteError(
    `${uri} is now ${now} bytes, not the ${was} bytes it was added with: it is not the same export`,
    'protocol',
    'point the clone at its original export, or remove the clone and add the new export',
  )
}
