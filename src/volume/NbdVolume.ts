import type {ConnectionOptions} from 'node:tls'
import {VolumeIoError} from '../errors/errors.js'
import {NbdClient} from '../nbd/NbdClient.js'
import {parseNbdUri} from '../nbd/nbdUri.js'
import type {Fingerprint, Volume, VolumeExtent, VolumeKind} from './Volume.js'

export interface NbdVolumeOptions {
  /** Open for writing; false makes the volume read-only whatever the server allows. */
  write: boolean
  timeouts?: {
    /** TCP connect + TLS + NBD handshake (default 10 000 ms). */
    connectMs?: number
    /** One request; on expiry the connection is dropped and every request fails (default 60 000 ms). */
    requestMs?: number
  }
  /** node:tls options; default: from the URI's tls-* parameters when it is nbds://. */
  tls?: ConnectionOptions
  /** Aborts opening. */
  signal?: AbortSignal
  /** Requests in flight on the connection (default 64). */
  maxInflight?: number
  /** READ/WRITE bytes in flight on the connection (default 64 MiB). */
  maxInflightBytes?: number
}

/**
 * A volume on an NBD server (a clone on another system): one connection, many requests in
 * flight on it (that is the parallelism). Size and read-only come from the server; writes
 * are refused when it exports read-only or when opened for reading only. knownZero is
 * always false: nothing here can tell that a remote export reads as zeros.
 *
 * Failures are RemoteError (exit status `remote`): unreachable, handshake/TLS, a dropped
 * connection, a timeout, or the server's error for one request (`errno` EIO, ENOSPC…).
 * After the connection drops every call fails: open the volume again to retry. Range and
 * read-only checks are VolumeIoError, as for files.
 */
export class NbdVolume implements Volume {
  readonly kind: VolumeKind = 'nbd'
  knownZero = false
  readonly size: number
  readonly readOnly: boolean

  private constructor(
    readonly path: string,
    readonly client: NbdClient,
    write: boolean,
  ) {
    this.size = client.size
    this.readOnly = !write || client.readOnly
  }

  /**
   * Connect to `uri` and negotiate its export. Rejects with UsageError for a malformed URI
   * or nbds:// without credentials, RemoteError when the server cannot be used. Waits.
   */
  static async open(uri: string, opts: NbdVolumeOptions): Promise<NbdVolume> {
    const target = parseNbdUri(uri)
    const client = await NbdClient.connect(target, {
      connectTimeoutMs: opts.timeouts?.connectMs,
      requestTimeoutMs: opts.timeouts?.requestMs,
      tls: opts.tls,
      signal: opts.signal,
      maxInflight: opts.maxInflight,
      maxInflightBytes: opts.maxInflightBytes,
    })
    return new NbdVolume(uri, client, opts.write)
  }

  private range(position: number, length: number, what: 'read' | 'write'): void {
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > this.size)
      throw new VolumeIoError(`${what} of ${length} bytes at offset ${position} is past the end of ${this.path} (${this.size} bytes)`, 'EINVAL')
  }

  private writable(): void {
    if (!this.readOnly) return
    if (this.client.readOnly)
      throw new VolumeIoError(`${this.path} is exported read-only by its NBD server; cannot write it`, 'EPERM', 'export it writable (qemu-nbd without --read-only, nbdkit without -r), or choose another volume')
    throw new VolumeIoError(`${this.path} is open read-only; cannot write it`, 'EBADF')
  }

  /** Read exactly `length` bytes at `position`. Waits. */
  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    this.range(position, length, 'read')
    return this.client.read(position, length, into)
  }

  /** Write the whole buffer at `position`. Not durable until flush(). Waits. */
  async write(position: number, data: Uint8Array): Promise<void> {
    this.writable()
    this.range(position, data.byteLength, 'write')
    await this.client.write(position, data)
  }

  /** Write with FUA: durable when it resolves (a FLUSH follows when the server lacks FUA). Waits. */
  async writeFua(position: number, data: Uint8Array): Promise<void> {
    this.writable()
    this.range(position, data.byteLength, 'write')
    await this.client.write(position, data, {fua: true})
  }

  /**
   * NBD_CMD_WRITE_ZEROES without NO_HOLE, punch or not: the server may free the blocks, which
   * keeps a remote clone sparse (the sync engine sends a source's zero runs this way).
   * Else zero buffers. Not durable until flush(). Waits.
   */
  async writeZeroes(position: number, length: number, _opts: {punch?: boolean} = {}): Promise<void> {
    this.writable()
    this.range(position, length, 'write')
    await this.client.writeZeroes(position, length)
  }

  /**
   * TRIM that reads as zeros afterwards: WRITE_ZEROES without NO_HOLE (the server may punch
   * holes), never NBD_CMD_TRIM, after which the range could read as anything. Waits.
   */
  async trim(position: number, length: number): Promise<void> {
    await this.writeZeroes(position, length, {punch: true})
  }

  /**
   * The remote's base:allocation block status where it offers it (holes and zero runs), else
   * one data run. Waits.
   */
  async extents(position: number, length: number): Promise<VolumeExtent[]> {
    this.range(position, length, 'read')
    if (length === 0) return []
    return this.client.extents(position, length)
  }

  /** NBD_CMD_FLUSH (a no-op when the server has no FLUSH). Waits. */
  async flush(): Promise<void> {
    await this.client.flush()
  }

  /** The URI and the export's size at open; nothing else of a remote export is visible. */
  async fingerprint(): Promise<Fingerprint> {
    return {kind: 'nbd', size: this.size, uri: this.path}
  }

  /** Wait for requests in flight, then NBD_CMD_DISC. Does not flush. Never rejects. Waits. */
  async close(): Promise<void> {
    await this.client.close()
  }
}
