/**
 * The one I/O interface every persistent write goes through: volume data, map files and
 * group.json (DESIGN §6). Production uses NodeDurableFs; crash tests substitute a recording
 * implementation (MemoryFs) that can replay any crash state.
 *
 * Durability contract (what a crash test is allowed to assume, and no more):
 * - write() is not durable until datasync() on the same file resolves; a datasync orders
 *   only its own file.
 * - rename() is atomic, but durable only after fsyncDir() of the target's directory.
 * - a 512-byte aligned sector is written whole or not at all.
 */
export interface OpenOptions {
  /** Open for writing as well as reading. */
  write?: boolean
  /** 'new': create, fail if it exists (O_EXCL). 'maybe': create if missing. Default: must exist. */
  create?: 'new' | 'maybe'
  /** Open a block device exclusively (O_EXCL without O_CREAT): a mounted or busy device fails with EBUSY. */
  exclusive?: boolean
  /**
   * Read-only, a small state file read whole at once and closed (status's map reads):
   * NodeDurableFs then opens, reads and closes it with synchronous calls, no thread-pool
   * round trips. Ignored with write or create.
   */
  readNow?: boolean
  /**
   * A small file whose open, writes, truncate and close are metadata or page-cache calls (a
   * state file's temp, a new sparse image): NodeDurableFs makes them on the calling thread
   * where src/io/loopPolicy.ts allows it; datasync still goes through the thread pool.
   */
  quick?: boolean
}

/** SEEK_DATA, SEEK_HOLE and PUNCH_HOLE on one file (kernel.ts's, for a file with no fd). */
export interface FileHoles {
  /** The first offset >= `offset` that holds data, or -1 when only a hole follows. */
  seekData(offset: number): number
  /** The first offset >= `offset` that starts a hole (the file's end counts as one). */
  seekHole(offset: number): number
  /** The range reads as zeros, its blocks freed, the size kept. Not durable until datasync(). */
  punchHole(offset: number, length: number): Promise<void>
}

export interface DurableFile {
  readonly path: string
  /**
   * The OS file descriptor, for the kernel calls Node lacks (src/volume/kernel.ts: SEEK_DATA,
   * fallocate, block ioctls). Absent (MemoryFs): callers do what Node alone can.
   */
  readonly fd?: number
  /**
   * Optional: the file's holes, where a DurableFs models them without an OS file descriptor
   * (MemoryFs with holes); with an fd the kernel calls are used instead. Absent, without an
   * fd: the file reads as all data and zeros are written.
   */
  readonly holes?: FileHoles
  /** Positional read into buf[0..length); resolves to the bytes read (short only at end of file). */
  read(buf: Uint8Array, position: number, length?: number): Promise<number>
  /** Positional write of the whole buffer. Not durable until datasync(). */
  write(buf: Uint8Array, position: number): Promise<void>
  /**
   * write(), done synchronously when that is cheap (NodeDurableFs: a small page-aligned write
   * into the page cache): true when done, false when the caller must call write(). Throws the
   * write's error. Absent: always write().
   */
  writeNow?(buf: Uint8Array, position: number): boolean
  /** fdatasync: every write to this file that completed before the call is durable when it resolves. */
  datasync(): Promise<void>
  /** Current size in bytes (for a block device, use the volume's size instead). */
  size(): Promise<number>
  truncate(length: number): Promise<void>
  close(): Promise<void>
}

export interface FileStat {
  dev: number
  ino: number
  size: number
  mtimeMs: number
  ctimeMs: number
  isFile: boolean
  isBlockDevice: boolean
  rdev: number
}

/** What lstat says about a path itself (a symlink is not followed), for the state directory's trust checks. */
export interface LinkStat {
  uid: number
  /** Permission bits (mode & 0o7777). */
  mode: number
  isSymlink: boolean
  isDirectory: boolean
}

export interface DurableFs {
  open(path: string, opts?: OpenOptions): Promise<DurableFile>
  /** Atomically replace `to` by `from`; durable only after fsyncDir(dirname(to)). */
  rename(from: string, to: string): Promise<void>
  fsyncDir(dir: string): Promise<void>
  unlink(path: string): Promise<void>
  mkdirp(dir: string, mode?: number): Promise<void>
  readdir(dir: string): Promise<string[]>
  exists(path: string): Promise<boolean>
  stat(path: string): Promise<FileStat>
  /** The whole file; with noFollow a symlink is refused (ELOOP) instead of followed (O_NOFOLLOW). */
  readFile(path: string, opts?: {noFollow?: boolean}): Promise<Buffer>
  /**
   * Optional: lstat (the path itself, never a symlink's target). Absent (MemoryFs, which has
   * no symlinks, owners or modes): the state directory's trust checks have nothing to check.
   */
  lstat?(path: string): Promise<LinkStat>
  /** The canonical path (symlinks resolved); ENOENT when missing. */
  realpath(path: string): Promise<string>
  /**
   * Optional: a second handle on an existing file that bypasses the page cache (O_DIRECT),
   * for bulk copies; read-write unless opts.write is false. Its I/O must be aligned (offset
   * and length to 4 KiB, memory to the device's DMA alignment) or it fails with EINVAL. Durability is unchanged: a write
   * through it is durable after datasync() of any handle on the same file. Absent (MemoryFs)
   * or failing: callers use the ordinary handle.
   */
  openDirect?(path: string, opts?: {write: boolean}): Promise<DurableFile>
}
