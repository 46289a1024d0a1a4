import {dirname} from 'node:path'
import {RefusedError, VolumeIoError, errnoOf} from '../errors/errors.js'
import type {DurableFile, DurableFs} from '../io/DurableFs.js'
import type {Fingerprint, Volume, VolumeKind} from './Volume.js'

const ZERO_CHUNK = 1024 * 1024
let zeros: Buffer | undefined

/** A shared, never-written 1 MiB of zeros. */
export function zeroChunk(): Buffer {
  zeros ??= Buffer.alloc(ZERO_CHUNK)
  return zeros
}

export function ioError(path: string, what: string, error: unknown, offset?: number): VolumeIoError {
  const errno = errnoOf(error)
  const at = offset === undefined ? '' : ` at offset ${offset}`
  const reason = errno === 'ENOSPC' ? 'no space left on device' : errno === 'EIO' ? 'I/O error' : (error as Error)?.message ?? String(error)
  return new VolumeIoError(`${reason} ${what} ${path}${at}`, errno, errno === 'ENOSPC' ? 'free space on that file system, then run the command again' : undefined)
}

/**
 * An image file (or, through BlockVolume, a block device): positional I/O through a
 * DurableFile, so crash tests can run it over the recording MemoryFs.
 */
export class FileVolume implements Volume {
  knownZero = false
  readonly kind: VolumeKind = 'file'

  protected constructor(
    protected readonly fs: DurableFs,
    protected readonly file: DurableFile,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
  ) {}

  /** Open an image file. Waits. */
  static async open(fs: DurableFs, path: string, opts: {write: boolean}): Promise<FileVolume> {
    let file: DurableFile
    try {
      file = await fs.open(path, {write: opts.write})
    } catch (error) {
      throw ioError(path, 'opening', error)
    }
    const size = await file.size()
    return new FileVolume(fs, file, path, size, !opts.write)
  }

  /** Create a new sparse image of `size` bytes; refuses an existing path. Waits. */
  static async createSparse(fs: DurableFs, path: string, size: number): Promise<void> {
    let f: DurableFile
    try {
      f = await fs.open(path, {write: true, create: 'new'})
    } catch (error) {
      if (errnoOf(error) === 'EEXIST') throw new RefusedError(`${path} already exists; refusing to overwrite it`, 'pick a new path, or drop --create to use the existing volume')
      throw ioError(path, 'creating', error)
    }
    try {
      await f.truncate(size)
      await f.datasync()
    } finally {
      await f.close()
    }
    // The new name must survive power loss before group.json names it (found by the crash model).
    await fs.fsyncDir(dirname(path))
  }

  private range(position: number, length: number, what: string): void {
    if (position < 0 || length < 0 || position + length > this.size)
      throw new VolumeIoError(`${what} [${position}, +${length}) is past the end of ${this.path} (${this.size} bytes)`, 'EINVAL')
  }

  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    this.range(position, length, 'read')
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length)
    let n: number
    try {
      n = await this.file.read(buf, position, length)
    } catch (error) {
      throw ioError(this.path, 'reading', error, position)
    }
    if (n < length) buf.fill(0, n)
    return buf
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new VolumeIoError(`${this.path} is open read-only`, 'EPERM')
    this.range(position, data.length, 'write')
    try {
      await this.file.write(data, position)
    } catch (error) {
      throw ioError(this.path, 'writing', error, position)
    }
  }

  /** Node cannot punch holes (no fallocate): zeros are written, in 1 MiB chunks. */
  async writeZeroes(position: number, length: number): Promise<void> {
    this.range(position, length, 'write')
    const z = zeroChunk()
    for (let off = 0; off < length; off += z.length) {
      // eslint-disable-next-line no-await-in-loop
      await this.write(position + off, z.subarray(0, Math.min(z.length, length - off)))
    }
  }

  async flush(): Promise<void> {
    try {
      await this.file.datasync()
    } catch (error) {
      throw ioError(this.path, 'flushing', error)
    }
  }

  async fingerprint(): Promise<Fingerprint> {
    const s = await this.fs.stat(this.path)
    return {kind: 'file', size: s.size, dev: s.dev, ino: s.ino, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs}
  }

  async close(): Promise<void> {
    await this.file.close()
  }
}
