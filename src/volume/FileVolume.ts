import {dirname} from 'node:path'
import {ClonectlError, NotFoundError, RefusedError, UsageError, VolumeIoError, errnoOf} from '../errors/errors.js'
import type {DurableFile, DurableFs} from '../io/DurableFs.js'
import {DIRECT_ALIGN, directAligned} from './alignedBuffer.js'
import {type Kernel, kernel} from './kernel.js'
import type {Fingerprint, Volume, VolumeExtent, VolumeKind} from './Volume.js'

/**
 * Bulk writes (from an alignedBuffer()) of at least this size into a fresh image go through
 * O_DIRECT: buffered, every page-cache page of a new file is new, and filling them is far
 * slower (nbdcopy avoids that by sync_file_range and fadvise(DONTNEED), which Node lacks).
 */
const DIRECT_MIN = 64 * 1024
const ALIGN = DIRECT_ALIGN

/** writeZeroes writes at most this much per call, from one shared buffer. */
const ZERO_CHUNK = 1024 * 1024
let zeros: Buffer | undefined

/** A shared 1 MiB of zeros. Only ever written from, never read into: keep it private. */
function zeroChunk(): Buffer {
  zeros ??= Buffer.alloc(ZERO_CHUNK)
  return zeros
}

/** errno → the words a storage administrator expects, and what to do about it. */
const ERRNO: Record<string, {reason: string; fix?: string}> = {
  ENOSPC: {reason: 'no space left on device', fix: 'free space on that file system, then run the command again'},
  EDQUOT: {reason: 'disk quota exceeded', fix: 'raise the quota or free space, then run the command again'},
  EFBIG: {reason: 'file too large', fix: 'the file system cannot hold a file this size; use another one'},
  EIO: {reason: 'I/O error', fix: 'check the device (dmesg, smartctl); it may be failing'},
  EROFS: {reason: 'read-only file system', fix: 'remount it read-write, or use a volume on another file system'},
  EACCES: {reason: 'permission denied', fix: 'run as a user that may open it (block devices usually need root)'},
  EPERM: {reason: 'operation not permitted', fix: 'run as a user that may open it (block devices usually need root)'},
  ENOENT: {reason: 'no such file or directory', fix: 'check the path'},
  ENOTDIR: {reason: 'a component of the path is not a directory', fix: 'check the path'},
  EISDIR: {reason: 'is a directory', fix: 'name an image file or a block device'},
  ENXIO: {reason: 'no such device (is it attached?)', fix: 'check that the device exists (lsblk, losetup -l)'},
  ENODEV: {reason: 'no such device (is it attached?)', fix: 'check that the device exists (lsblk, losetup -l)'},
  EBUSY: {reason: 'device or resource busy', fix: 'stop whatever holds it (a mount, a VM, another clonectl), then run the command again'},
  EMFILE: {reason: 'too many open files', fix: 'raise the open-file limit (ulimit -n)'},
  ENFILE: {reason: 'too many open files in the system', fix: 'raise fs.file-max, or close other programs'},
  EINVAL: {reason: 'invalid argument'},
}

/**
 * Wrap an error from the fs as a VolumeIoError naming the path and offset, e.g.
 * "no space left on device writing /srv/a.img at offset 4096". A ClonectlError passes
 * through; an error without an errno is a bug and is rethrown as it is.
 */
export function ioError(path: string, what: string, error: unknown, offset?: number): Error {
  if (error instanceof ClonectlError) return error
  const errno = errnoOf(error)
  if (errno === undefined || !/^E[A-Z0-9]+$/.test(errno)) return error instanceof Error ? error : new Error(String(error))
  const known = ERRNO[errno]
  const at = offset === undefined ? '' : ` at offset ${offset}`
  // Permissions do not stop root: EPERM then means a file attribute (chattr +i or +a).
  const fix = errno === 'EPERM' && process.getuid?.() === 0 ? `check its attributes (lsattr ${path}): clear an immutable or append-only flag with chattr -i (or -a), or name another volume` : known?.fix
  return new VolumeIoError(`${known?.reason ?? `error ${errno}`} ${what} ${path}${at}`, errno, fix)
}

/**
 * An image file: positional I/O through a DurableFile, so crash tests can run it over the
 * recording MemoryFs. Its size is fixed when it is opened: I/O past it is refused, never
 * grows the file. Not safe to close() while I/O is in flight; everything else may overlap.
 * (BlockVolume reuses the data path for block devices.)
 */
export class FileVolume implements Volume {
  /** Set by the caller for a freshly created sparse image (see Volume.knownZero). */
  knownZero = false
  readonly kind: VolumeKind = 'file'

  /** The O_DIRECT handle: undefined until a direct read or write asks, null when unavailable. */
  private direct?: DurableFile | null
  private writesDirect = true
  private directOpening?: Promise<DurableFile | null>
  /**
   * The sync engine's bulk reads (alignedBuffer() slices of at least 64 KiB) go through
   * O_DIRECT, as dm-clone's kcopyd bypasses the page cache: a copy then neither evicts the
   * hosts' working set nor pays for a page-cache page per 4 KiB, and a hole reads as zeros
   * filled straight into the buffer (buffered copies spent their system CPU allocating and
   * freeing page-cache pages). What hosts read (unaligned buffers) stays buffered. A range
   * wholly in the page cache (a hot volume's working set, an image just written) is read
   * from there all the same: O_DIRECT would read it from the device again, after writing
   * back its dirty pages (a 2 GiB sync of a cached source: 2.7-3.3 s so, 1.4 s from the cache).
   * Cleared when the direct handle cannot be opened, or the file system refuses O_DIRECT
   * (EINVAL).
   */
  readsDirect = true
  /** Reads and writes that really went through O_DIRECT: what says the path was taken, not the intent. */
  directReads = 0
  directWrites = 0
  /** See Volume.pageCacheBytesWritten: buffered writes, zeros written as data and in-kernel copies. */
  pageCacheBytesWritten = 0

  protected constructor(
    protected readonly fs: DurableFs,
    protected readonly file: DurableFile,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
  ) {}

  /**
   * Open an existing regular file as a volume, for reading, or reading and writing. Its size
   * is the file's size now (fstat of the opened file). Waits.
   */
  static async open(fs: DurableFs, path: string, opts: {write: boolean}): Promise<FileVolume> {
    let isFile: boolean
    try {
      isFile = (await fs.stat(path)).isFile
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') throw new NotFoundError(`image file ${path} does not exist`, 'check the path, or pass --create to make a sparse image')
      throw ioError(path, 'opening', error)
    }
    if (!isFile) throw new UsageError(`${path} is not a regular file`, 'name an image file (block devices are opened through openVolume)')
    let file: DurableFile
    try {
      file = await fs.open(path, {write: opts.write})
    } catch (error) {
      throw ioError(path, 'opening', error)
    }
    let size: number
    try {
      size = await file.size()
    } catch (error) {
      await file.close().catch(() => undefined)
      throw ioError(path, 'reading the size of', error)
    }
    return new FileVolume(fs, file, path, size, !opts.write)
  }

  /**
   * Create a new sparse image of `size` bytes at `path`: refuses an existing path, makes the
   * size and the new name durable (fdatasync, then fsync of the directory) before it
   * resolves. The caller opens it and marks the volume knownZero. Waits.
   */
  static async createSparse(fs: DurableFs, path: string, size: number): Promise<void> {
    if (!Number.isSafeInteger(size) || size < 0) throw new UsageError(`cannot create ${path} with size ${size}: not a byte count`)
    let f: DurableFile
    try {
      f = await fs.open(path, {write: true, create: 'new', quick: true})
    } catch (error) {
      if (errnoOf(error) === 'EEXIST') throw new RefusedError(`${path} already exists; refusing to overwrite it`, 'pick a new path, or drop --create to use the existing volume')
      if (errnoOf(error) === 'ENOENT') throw new NotFoundError(`cannot create ${path}: its directory ${dirname(path)} does not exist`, 'create the directory first')
      throw ioError(path, 'creating', error)
    }
    try {
      await f.truncate(size)
      await f.datasync()
    } catch (error) {
      // Leave no half-made image behind: the user would have to remove it before retrying.
      await f.close().catch(() => undefined)
      await fs.unlink(path).catch(() => undefined)
      throw ioError(path, `making a ${size}-byte sparse image at`, error)
    }
    await f.close()
    // The new name must survive power loss before group.json names it (found by the crash model).
    await fs.fsyncDir(dirname(path))
  }

  private range(position: number, length: number, what: 'read' | 'write'): void {
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > this.size)
      throw new VolumeIoError(`${what} of ${length} bytes at offset ${position} is past the end of ${this.path} (${this.size} bytes)`, 'EINVAL')
  }

  private writable(): void {
    if (this.readOnly) throw new VolumeIoError(`${this.path} is open read-only; cannot write it`, 'EBADF')
  }

  /** Read exactly `length` bytes at `position`. Refuses a range past the end. Waits. */
  async read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    this.range(position, length, 'read')
    const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length)
    let n: number
    try {
      n = (await this.readDirect(position, buf)) ?? (await this.file.read(buf, position, length))
    } catch (error) {
      throw ioError(this.path, 'reading', error, position)
    }
    // Short only when the file shrank behind clonectl's back: returning zeros would copy them.
    if (n < length)
      throw new VolumeIoError(`${this.path} ended at offset ${position + n}, inside its size of ${this.size} bytes when opened: was it truncated by another program?`, 'EIO', 'find what changed the volume; then verify or fully resync the group')
    return buf
  }

  private directFile(): Promise<DurableFile | null> {
    if (this.direct !== undefined) return Promise.resolve(this.direct)
    this.directOpening ??= (async () => {
      let f: DurableFile | null = null
      if (this.fs.openDirect && this.size >= ALIGN && !process.env.CLONECTL_NO_DIRECT) f = await this.fs.openDirect(this.path, {write: !this.readOnly}).catch(() => null)
      this.direct = f
      // No direct handle (no O_DIRECT here, or it failed to open): every read is buffered.
      if (!f) this.readsDirect = false
      return f
    })()
    return this.directOpening
  }

  /**
   * Read through O_DIRECT when this volume readsDirect, buf is an alignedBuffer() slice
   * aligned for it and the range is not wholly in the page cache; undefined otherwise (read
   * buffered). O_DIRECT reads see every completed write, a host's buffered write included:
   * the kernel writes back dirty page-cache pages in the range first (and a write racing the
   * read is the collision detector's business).
   */
  private async readDirect(position: number, buf: Buffer): Promise<number | undefined> {
    if (!this.readsDirect || !directAligned(position, buf, DIRECT_MIN) || this.inPageCache(position, buf.byteLength)) return undefined
    const d = await this.directFile()
    if (!d) return undefined
    try {
      const n = await d.read(buf, position, buf.byteLength)
      this.directReads++
      return n
    } catch (error) {
      if (errnoOf(error) !== 'EINVAL') throw error
      // This file system refuses it after all: buffered from now on.
      this.readsDirect = false
      return undefined
    }
  }

  /** Every page of the range is in the page cache (cachestat); false where that cannot be told. */
  private inPageCache(position: number, length: number): boolean {
    const fd = this.file.fd
    return fd !== undefined && kernel()?.pagesCached(fd, position, length) === true
  }

  /**
   * Write through O_DIRECT when this is a fresh image (knownZero: there every page-cache page
   * would be new) and data is an alignedBuffer() slice aligned for it; false otherwise. Never
   * over a volume hosts use (a restore's source): O_DIRECT would drop the pages they read
   * from the cache (measured: slower, both ways).
   */
  private async writeDirect(position: number, data: Uint8Array): Promise<boolean> {
    if (!this.knownZero || !this.writesDirect || this.readOnly || !directAligned(position, data, DIRECT_MIN)) return false
    const d = await this.directFile()
    if (!d) return false
    try {
      await d.write(data, position)
      this.directWrites++
      return true
    } catch (error) {
      if (errnoOf(error) !== 'EINVAL') throw ioError(this.path, 'writing', error, position)
      // This file system (or device) refuses it after all: buffered from now on.
      this.writesDirect = false
      return false
    }
  }

  /**
   * Write the whole buffer at `position`. Refuses a range past the end. Not durable until
   * flush() (an O_DIRECT write too: fdatasync commits its allocation and the device cache).
   * Waits.
   */
  writeNow(position: number, data: Uint8Array): boolean {
    this.writable()
    this.range(position, data.byteLength, 'write')
    // May go through O_DIRECT (writeDirect): never synchronously.
    if ((this.knownZero && directAligned(position, data, DIRECT_MIN)) || !this.file.writeNow) return false
    try {
      const done = this.file.writeNow(data, position)
      if (done) this.pageCacheBytesWritten += data.byteLength
      return done
    } catch (error) {
      throw ioError(this.path, 'writing', error, position)
    }
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.writable()
    this.range(position, data.byteLength, 'write')
    // Checked here first: a host write (small, unaligned memory) skips an await.
    if (this.knownZero && directAligned(position, data, DIRECT_MIN) && (await this.writeDirect(position, data))) return
    try {
      await this.file.write(data, position)
      this.pageCacheBytesWritten += data.byteLength
    } catch (error) {
      throw ioError(this.path, 'writing', error, position)
    }
  }

  /**
   * Make a range read as zeros. Through the kernel where it can (kernel.ts): punch a hole
   * (`punch`: blocks freed) or fallocate ZERO_RANGE (blocks kept); else, or where the file
   * system refuses, by writing zeros, at most 1 MiB a write from one shared buffer. Not
   * durable until flush(). Waits.
   */
  async writeZeroes(position: number, length: number, opts: {punch?: boolean} = {}): Promise<void> {
    this.writable()
    this.range(position, length, 'write')
    if (length === 0) return
    const k = this.file.fd === undefined ? undefined : kernel()
    try {
      if (opts.punch && this.file.holes && this.file.fd === undefined) {
        await this.file.holes.punchHole(position, length)
        return
      }
      if (k && (await this.zeroByKernel(k, this.file.fd!, position, length, opts.punch ?? false))) return
    } catch (error) {
      throw ioError(this.path, 'zeroing', error, position)
    }
    const z = zeroChunk()
    for (let off = 0; off < length; off += z.length) {
      const n = Math.min(z.length, length - off)
      try {
        // In order, one chunk at a time.
        await this.file.write(n === z.length ? z : z.subarray(0, n), position + off)
        this.pageCacheBytesWritten += n
      } catch (error) {
        throw ioError(this.path, 'writing zeros to', error, position + off)
      }
    }
  }

  /** copy_file_range was refused here (EXDEV, EINVAL, EOPNOTSUPP...): not tried again. */
  private copyRefused = false

  /**
   * Copy a range of another image file here inside the kernel (copy_file_range): no
   * user-space buffer, no O_DIRECT. False where it cannot (not two image files, no kernel
   * calls, refused): the caller then reads and writes the range (a refusal comes before any
   * byte is copied; were some copied, they are written again, the same). Not durable until
   * flush(). Waits.
   */
  async copyFrom(from: Volume, position: number, length: number): Promise<boolean> {
    this.writable()
    this.range(position, length, 'write')
    const c = this.kernelCopy(from)
    if (!c) return false
    c.from.range(position, length, 'read')
    let n: number
    try {
      n = await c.k.copyFileRange(c.inFd, position, c.outFd, position, length)
    } catch (error) {
      // Refused (another file system, a kernel without it): read and write from now on.
      if (!unsupported(error) && errnoOf(error) !== 'EXDEV' && errnoOf(error) !== 'EBADF') throw ioError(this.path, `copying ${from.path} to`, error, position)
      this.copyRefused = true
      return false
    }
    // copy_file_range without reflinks copies through the page cache.
    this.pageCacheBytesWritten += n
    // Short only when the source shrank behind clonectl's back (as read() says).
    if (n < length)
      throw new VolumeIoError(`${from.path} ended at offset ${position + n}, inside its size of ${from.size} bytes when opened: was it truncated by another program?`, 'EIO', 'find what changed the volume; then verify or fully resync the group')
    return true
  }

  /** Whether copyFrom(from, ...) may copy in the kernel (it may still be refused the first time). Does not wait. */
  canCopyFrom(from: Volume): boolean {
    return this.kernelCopy(from) !== undefined
  }

  /**
   * The kernel and both descriptors for copy_file_range from `from`, when two image files with
   * fds may use it and CLONECTL_COPY_RANGE=1 asks for it. Off by default: copy_file_range on a
   * file system without reflinks copies through the page cache, which the bulk copies avoid
   * (O_DIRECT: a host's working set is not evicted), and on the bench machine it made a 16 GiB
   * fresh clone take about twice as long while gaining nothing measurable at 2 GiB.
   */
  private kernelCopy(from: Volume): {k: Kernel; from: FileVolume; inFd: number; outFd: number} | undefined {
    if (process.env.CLONECTL_COPY_RANGE !== '1') return undefined
    if (this.copyRefused || this.readOnly || this.kind !== 'file' || !(from instanceof FileVolume) || from.kind !== 'file') return undefined
    const inFd = from.file.fd
    const outFd = this.file.fd
    const k = inFd === undefined || outFd === undefined ? undefined : kernel()
    return k && {k, from, inFd: inFd!, outFd: outFd!}
  }

  /** Which fallocate modes this file system refused (EOPNOTSUPP): not tried again. */
  private refused = {punch: false, zeroRange: false}

  /**
   * Zero [position, +length) through the kernel; false when this file system cannot (the
   * caller writes zeros). Rejects with the call's error otherwise. BlockVolume overrides it.
   */
  protected async zeroByKernel(k: Kernel, fd: number, position: number, length: number, punch: boolean): Promise<boolean> {
    const mode = punch ? 'punch' : 'zeroRange'
    if (this.refused[mode]) return false
    try {
      await (punch ? k.punchHole(fd, position, length) : k.zeroRange(fd, position, length))
      return true
    } catch (error) {
      if (!unsupported(error)) throw error
      this.refused[mode] = true
      return false
    }
  }

  /** TRIM: the range reads as zeros afterwards, its blocks freed where the file system can. Waits. */
  async trim(position: number, length: number): Promise<void> {
    await this.writeZeroes(position, length, {punch: true})
  }

  /**
   * Data and hole runs of the range from lseek(SEEK_DATA / SEEK_HOLE) on the file; one data
   * run when the kernel calls are unavailable (no fd, koffi not loaded). A file system
   * without SEEK_DATA support answers "all data" by itself (the kernel's generic lseek).
   * Synchronous lseek calls, one pair per data run. Waits.
   */
  async extents(position: number, length: number): Promise<VolumeExtent[]> {
    this.range(position, length, 'read')
    if (length === 0) return []
    const seeks = this.seeks()
    if (!seeks) return [{offset: position, length, kind: 'data'}]
    try {
      return seekExtents(seeks, position, position + length)
    } catch (error) {
      // EINVAL: this file (a block device, some FUSE and network file systems) has no
      // SEEK_DATA: it cannot tell, so all data.
      if (unsupported(error)) return [{offset: position, length, kind: 'data'}]
      throw ioError(this.path, 'finding the holes of', error, position)
    }
  }

  /** The first run of extents(position, length), by at most two lseek calls. Waits. */
  async firstExtent(position: number, length: number): Promise<VolumeExtent | undefined> {
    this.range(position, length, 'read')
    if (length === 0) return undefined
    const seeks = this.seeks()
    if (!seeks) return {offset: position, length, kind: 'data'}
    try {
      return seekExtents(seeks, position, position + length, 1)[0]
    } catch (error) {
      if (unsupported(error)) return {offset: position, length, kind: 'data'}
      throw ioError(this.path, 'finding the holes of', error, position)
    }
  }

  /** Whether extents() can find holes here: a real file descriptor and the kernel calls (or a file that models holes). */
  tellsHoles(): boolean {
    return this.seeks() !== undefined
  }

  /** SEEK_DATA and SEEK_HOLE on this file: the kernel's on an fd, else the file's own (MemoryFs), else none. */
  private seeks(): Seeks | undefined {
    const fd = this.file.fd
    if (fd === undefined) return this.file.holes
    const k = kernel()
    return k && {seekData: (offset) => k.seekData(fd, offset), seekHole: (offset) => k.seekHole(fd, offset)}
  }

  /** fdatasync: every write that completed before the call is durable when it resolves. Waits. */
  async flush(): Promise<void> {
    try {
      await this.file.datasync()
    } catch (error) {
      throw ioError(this.path, 'flushing', error)
    }
  }

  /** dev, inode, size, mtime and ctime of the file now (stat by path). Waits. */
  async fingerprint(): Promise<Fingerprint> {
    let s
    try {
      s = await this.fs.stat(this.path)
    } catch (error) {
      throw ioError(this.path, 'examining', error)
    }
    return {kind: 'file', size: s.size, dev: s.dev, ino: s.ino, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs}
  }

  /** Close the file. Does not flush. Waits. */
  async close(): Promise<void> {
    const d = this.direct
    this.direct = null
    if (d) await d.close().catch(() => undefined)
    try {
      await this.file.close()
    } catch (error) {
      throw ioError(this.path, 'closing', error)
    }
  }
}

/** EOPNOTSUPP / ENOSYS / EINVAL (a mode the file system does not know): fall back, not fail. */
function unsupported(error: unknown): boolean {
  return ['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS', 'EINVAL'].includes(errnoOf(error) ?? '')
}

/** lseek(SEEK_DATA) and lseek(SEEK_HOLE) on one file. */
interface Seeks {
  seekData(offset: number): number
  seekHole(offset: number): number
}

/**
 * The data and hole runs of [start, end) by lseek, at most `max` of them (the first ones); a
 * hole runs to `end` once no data follows.
 */
export function seekExtents(k: Seeks, start: number, end: number, max = Number.POSITIVE_INFINITY): VolumeExtent[] {
  const out: VolumeExtent[] = []
  let pos = start
  while (pos < end && out.length < max) {
    const d = k.seekData(pos)
    if (d < 0 || d >= end) {
      out.push({offset: pos, length: end - pos, kind: 'hole'})
      break
    }
    if (d > pos) out.push({offset: pos, length: d - pos, kind: 'hole'})
    const h = Math.min(k.seekHole(d), end)
    // A file changed under us could answer h <= d: take the rest as data rather than loop.
    const stop = h > d ? h : end
    out.push({offset: d, length: stop - d, kind: 'data'})
    pos = stop
  }
  return out
}
