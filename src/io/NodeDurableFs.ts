// fs.promises is read at each call, so node:fs/promises (~1.3 ms to load: Node sets up
// FileHandle and the streams, readline and watchers it brings) loads on first use, which a
// status or --version, whose file system calls are all synchronous, never makes.
import {closeSync, constants, existsSync, fdatasync, fstatSync, fsync, ftruncateSync, promises as fsp, lstatSync, mkdirSync, openSync, readSync, readdirSync, readFileSync, realpathSync, renameSync, statSync, writeSync} from 'node:fs'
import type {FileHandle} from 'node:fs/promises'
import type {DurableFile, DurableFs, FileStat, LinkStat, OpenOptions} from './DurableFs.js'
import {metadataOnCallingThread} from './loopPolicy.js'

/**
 * Writes at most this long, page-aligned, through a buffered (not O_DIRECT) handle are done
 * with a synchronous pwrite on the calling thread: they only copy into the page cache (no
 * read of a partial page first), which costs a few µs, while a round trip through libuv's
 * thread pool costs a queue lock, a worker wake-up and a completion wake-up (~15-25 µs of
 * CPU and ~3 context switches). A mirrored host write pays that once per volume. Measured
 * through serve, 4K randwrite QD16 (perf, CPU per host write): no clone 21 → 15 µs, one
 * synchronized clone 31 → 19 µs, three 69 → 33 µs; context switches per write 4-13 → < 0.5.
 * The event loop can block only where the kernel throttles a writer (dirty page limits),
 * which throttles the thread pool's writers just as much; O_DIRECT handles (real device
 * I/O) and bulk copies stay on the pool.
 */
export const SYNC_WRITE_MAX = 64 * 1024
const PAGE = 4096

class NodeFile implements DurableFile {
  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    private readonly direct = false,
  ) {}

  get fd(): number {
    return this.fh.fd
  }

  async read(buf: Uint8Array, position: number, length = buf.byteLength): Promise<number> {
    let done = 0
    while (done < length) {
      // A short read is rare; retry the remainder.
      const {bytesRead} = await this.fh.read(buf, done, length - done, position + done)
      if (bytesRead === 0) break
      done += bytesRead
    }
    return done
  }

  writeNow(buf: Uint8Array, position: number): boolean {
    const n = buf.byteLength
    if (this.direct || n > SYNC_WRITE_MAX || n % PAGE !== 0 || position % PAGE !== 0) return false
    for (let done = 0; done < n; ) done += writeSync(this.fh.fd, buf, done, n - done, position + done)
    return true
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    if (this.writeNow(buf, position)) return
    let done = 0
    while (done < buf.byteLength) {
      const {bytesWritten} = await this.fh.write(buf, done, buf.byteLength - done, position + done)
      done += bytesWritten
    }
  }

  async datasync(): Promise<void> {
    await this.fh.datasync()
  }

  async size(): Promise<number> {
    return (await this.fh.stat()).size
  }

  async truncate(length: number): Promise<void> {
    await this.fh.truncate(length)
  }

  async close(): Promise<void> {
    await this.fh.close()
  }
}

/** fdatasync or fsync of a raw fd, through the thread pool: it waits for the device. */
function syncThroughPool(fd: number, data: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    ;(data ? fdatasync : fsync)(fd, (error) => (error ? reject(error) : resolve()))
  })
}

/**
 * A file opened with readNow or quick: open, reads, writes, truncate and close are synchronous
 * calls on the calling thread (see OpenOptions and src/io/loopPolicy.ts), datasync goes through
 * the thread pool. status reads each group's maps this way (readNow), about four thread-pool
 * round trips fewer a map, and none at all in a status that reads nothing else; an atomic
 * save of a state file makes two round trips (its fdatasync and the directory's fsync), not 8.
 */
class NodeFdFile implements DurableFile {
  constructor(
    readonly path: string,
    readonly fd: number,
    private readonly writable: boolean,
  ) {}

  async read(buf: Uint8Array, position: number, length = buf.byteLength): Promise<number> {
    let done = 0
    while (done < length) {
      const n = readSync(this.fd, buf, done, length - done, position + done)
      if (n === 0) break
      done += n
    }
    return done
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    this.mayWrite()
    for (let done = 0; done < buf.byteLength; ) done += writeSync(this.fd, buf, done, buf.byteLength - done, position + done)
  }

  async datasync(): Promise<void> {
    if (this.writable) await syncThroughPool(this.fd, true)
  }

  async size(): Promise<number> {
    return fstatSync(this.fd).size
  }

  async truncate(length: number): Promise<void> {
    this.mayWrite()
    ftruncateSync(this.fd, length)
  }

  async close(): Promise<void> {
    closeSync(this.fd)
  }

  private mayWrite(): void {
    if (!this.writable) throw Object.assign(new Error(`${this.path} is open for reading only`), {code: 'EBADF'})
  }
}

/** The real file system. */
export class NodeDurableFs implements DurableFs {
  async open(path: string, opts: OpenOptions = {}): Promise<DurableFile> {
    if (opts.readNow && !opts.write && !opts.create) return new NodeFdFile(path, openSync(path, constants.O_RDONLY), false)
    let flags = opts.write ? constants.O_RDWR : constants.O_RDONLY
    if (opts.create === 'new') flags |= constants.O_CREAT | constants.O_EXCL
    else if (opts.create === 'maybe') flags |= constants.O_CREAT
    else if (opts.exclusive) flags |= constants.O_EXCL
    if (opts.quick && metadataOnCallingThread()) return new NodeFdFile(path, openSync(path, flags, 0o600), Boolean(opts.write))
    const fh = await fsp.open(path, flags, 0o600)
    return new NodeFile(path, fh)
  }

  /** O_DIRECT where the platform has it (Linux); EINVAL from a file system without it. */
  async openDirect(path: string, opts: {write: boolean} = {write: true}): Promise<DurableFile> {
    const direct = (constants as Record<string, number | undefined>).O_DIRECT
    if (!direct) throw Object.assign(new Error(`O_DIRECT is not available on ${process.platform}`), {code: 'EINVAL'})
    const fh = await fsp.open(path, (opts.write ? constants.O_RDWR : constants.O_RDONLY) | direct)
    return new NodeFile(path, fh, true)
  }

  async rename(from: string, to: string): Promise<void> {
    if (metadataOnCallingThread()) renameSync(from, to)
    else await fsp.rename(from, to)
  }

  async fsyncDir(dir: string): Promise<void> {
    if (metadataOnCallingThread()) {
      const fd = openSync(dir, constants.O_RDONLY)
      try {
        await syncThroughPool(fd, false)
      } finally {
        closeSync(fd)
      }
      return
    }
    const fh = await fsp.open(dir, constants.O_RDONLY)
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  }

  async unlink(path: string): Promise<void> {
    await fsp.rm(path, {force: true})
  }

  async mkdirp(dir: string, mode = 0o700): Promise<void> {
    // Synchronous, like the metadata reads below: every command makes sure of the state directory at start.
    mkdirSync(dir, {recursive: true, mode})
  }

  // The metadata reads below (readdir, access, stat, lstat, realpath, and readFile, which
  // reads group.json only) are synchronous calls behind the async interface, for the reason
  // SYNC_WRITE_MAX gives: each is a few µs in the kernel, where a thread-pool round trip cost
  // ~40 µs here, and `status` makes about 20 of them per group before it prints anything
  // (status of 40 groups: 95.7 -> 81.2 ms). fsync, rename and data I/O stay on the pool.
  async readdir(dir: string): Promise<string[]> {
    return readdirSync(dir)
  }

  async exists(path: string): Promise<boolean> {
    // existsSync answers false without making an error (status asks for every group's control socket, mostly absent).
    return existsSync(path)
  }

  async stat(path: string): Promise<FileStat> {
    const s = statSync(path)
    return {
      dev: s.dev,
      ino: s.ino,
      size: s.size,
      mtimeMs: s.mtimeMs,
      ctimeMs: s.ctimeMs,
      isFile: s.isFile(),
      isBlockDevice: s.isBlockDevice(),
      rdev: s.rdev,
    }
  }

  async readFile(path: string, opts: {noFollow?: boolean} = {}): Promise<Buffer> {
    if (!opts.noFollow) return readFileSync(path)
    const fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
    try {
      return readFileSync(fd)
    } finally {
      closeSync(fd)
    }
  }

  async lstat(path: string): Promise<LinkStat> {
    const s = lstatSync(path)
    return {uid: s.uid, mode: s.mode & 0o7777, isSymlink: s.isSymbolicLink(), isDirectory: s.isDirectory()}
  }

  async realpath(path: string): Promise<string> {
    return realpathSync.native(path)
  }
}

export const nodeFs = new NodeDurableFs()
