/**
 * The libc calls Node lacks, reached through koffi (an FFI with prebuilt binaries in its npm
 * package: no compiler on the user's machine). This module is their one owner:
 *
 * - lseek(SEEK_DATA / SEEK_HOLE): where a file's data and holes are (sparse copies, NBD
 *   base:allocation).
 * - fallocate(PUNCH_HOLE | KEEP_SIZE): zeros that free their blocks (TRIM that keeps holes);
 *   on a block device the kernel turns it into WRITE ZEROES with unmap allowed, and refuses
 *   (EOPNOTSUPP) where the device cannot guarantee zeros afterwards.
 * - fallocate(ZERO_RANGE): zeros without writing them, blocks kept allocated.
 * - ioctl(BLKZEROOUT): a block device zeroes a range itself (offload, else the kernel writes).
 * - ioctl(BLKDISCARD): only where the caller has checked that discarded blocks read as zeros.
 * - copy_file_range(2): file → file copies inside the kernel (no user-space buffer; a
 *   reflink where the file system shares blocks). Refused with EXDEV, EINVAL, EOPNOTSUPP or
 *   ENOSYS where it cannot: the caller then reads and writes.
 * - malloc_trim(0): glibc hands the free pages inside its heaps back to the kernel (serve
 *   after a burst of payloads: freed 64 KiB socket chunks leave holes that glibc keeps).
 * - cachestat(2) (Linux 6.5+, through syscall(2)): whether a range is wholly in the page
 *   cache, so a copy reads it from there rather than from the device (O_DIRECT).
 *
 * lseek and cachestat run synchronously (lookups in the extent tree or the page cache,
 * microseconds). The zeroing calls can take long (BLKZEROOUT may write gigabytes), so they
 * run on koffi's worker threads (`.async`); errno is thread-local there, so a failed async
 * call is made once more synchronously to learn its errno: every one of them is idempotent.
 *
 * If koffi cannot load (no prebuilt binary for the platform, a seccomp'd sandbox, a
 * non-glibc libc name), kernel() returns undefined after one warning naming koffi and what
 * it costs; every caller then does what Node alone can (holes read as data, zeros written).
 */
import {existsSync} from 'node:fs'
import {createRequire} from 'node:module'
import {promisify} from 'node:util'

/** Linux values (x86-64 and arm64 alike). */
const SEEK_DATA = 3
const SEEK_HOLE = 4
const FALLOC_FL_KEEP_SIZE = 0x01
const FALLOC_FL_PUNCH_HOLE = 0x02
const FALLOC_FL_ZERO_RANGE = 0x10
/** _IO(0x12, 119) and _IO(0x12, 127): both take a uint64_t[2] of {start, length}. */
const BLKDISCARD = 0x1277
const BLKZEROOUT = 0x127f
/** cachestat's number in the unified syscall table (x86-64 and arm64 alike, Linux 6.5+). */
const SYS_CACHESTAT = 451

/** errno values this module names; anything else is reported by number. */
const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM',
  5: 'EIO',
  6: 'ENXIO',
  9: 'EBADF',
  13: 'EACCES',
  16: 'EBUSY',
  22: 'EINVAL',
  27: 'EFBIG',
  28: 'ENOSPC',
  29: 'ESPIPE',
  30: 'EROFS',
  38: 'ENOSYS',
  95: 'EOPNOTSUPP',
  122: 'EDQUOT',
}

/** A failed libc call, with Node's shape (`code`, `syscall`) so ioError() words it. */
export class KernelError extends Error {
  constructor(
    readonly syscall: string,
    readonly errnoValue: number,
  ) {
    const code = ERRNO_NAMES[errnoValue] ?? `E${errnoValue}`
    super(`${syscall} failed: ${code}`)
    this.code = code
  }

  readonly code: string
}

export interface Kernel {
  /** The first offset >= `offset` that holds data, or -1 when only a hole follows (ENXIO). */
  seekData(fd: number, offset: number): number
  /** The first offset >= `offset` that starts a hole (the file's end counts as one). */
  seekHole(fd: number, offset: number): number
  /** fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads as zeros, its blocks freed. */
  punchHole(fd: number, offset: number, length: number): Promise<void>
  /** fallocate(ZERO_RANGE | KEEP_SIZE): the range reads as zeros, its blocks kept. */
  zeroRange(fd: number, offset: number, length: number): Promise<void>
  /** ioctl(BLKZEROOUT) on a block device. */
  blkZeroOut(fd: number, offset: number, length: number): Promise<void>
  /** ioctl(BLKDISCARD) on a block device: only where discarded blocks read as zeros. */
  blkDiscard(fd: number, offset: number, length: number): Promise<void>
  /**
   * copy_file_range(2) of [inOffset, +length) of fdIn to outOffset of fdOut, looping over
   * short copies; resolves to the bytes copied (short only at fdIn's end). Runs on a worker
   * thread. Rejects with a KernelError (EXDEV, EINVAL, EOPNOTSUPP... : use read and write).
   */
  copyFileRange(fdIn: number, inOffset: number, fdOut: number, outOffset: number, length: number): Promise<number>
  /** glibc's malloc_trim(0): true when memory was handed back; undefined where libc has no malloc_trim. */
  mallocTrim?: () => boolean
  /**
   * Whether every page of [offset, +length) of fd is in the page cache (cachestat(2)), or
   * undefined where the kernel cannot say (before Linux 6.5, a seccomp filter, another
   * architecture): the caller then decides as if it did not know.
   */
  pagesCached(fd: number, offset: number, length: number): boolean | undefined
}

type Fn = ((...args: unknown[]) => unknown) & {async: (...args: unknown[]) => void}
interface Koffi {
  load(name: string): {func(decl: string): Fn}
  errno(): number
}

let loaded: Kernel | null | undefined
let warn: (message: string) => void = (m) => process.emitWarning(m, 'ClonectlWarning')

/** Where the one warning goes when koffi cannot load (tests capture it). Returns the previous sink. */
export function setKernelWarning(sink: (message: string) => void): (message: string) => void {
  const old = warn
  warn = sink
  return old
}

declare const require: NodeJS.Require | undefined

function loadKoffi(): Koffi {
  if (process.env.CLONECTL_NO_KOFFI) throw new Error('disabled by CLONECTL_NO_KOFFI')
  // The bundle is CommonJS (its require finds koffi beside it); the unbundled ES modules
  // (tests) make one.
  const req = typeof require === 'function' ? require : createRequire(import.meta.url)
  return glibcBinary(req) ?? (req('koffi') as Koffi)
}

/** Node's arch → the name in musl's dynamic loader (/lib/ld-musl-NAME.so.1). */
const MUSL_ARCH: Partial<Record<string, string>> = {x64: 'x86_64', arm64: 'aarch64'}

/**
 * koffi's prebuilt glibc binary, loaded directly, or undefined (then koffi's own loader).
 * require('koffi') took 6.3 ms here, every command that copies or serves paying it: it
 * resolves its package's exports map, reads node's ELF header to tell glibc from musl, then
 * loads the binary of its platform package (1.2 ms alone). Its choice is this one: the
 * `linux_ARCH` (glibc) build where node's loader is not musl's; around the binary it only
 * adds deprecated aliases clonectl never calls. Another layout, another koffi major, or a
 * binary that fails to load: koffi's loader decides, as before.
 */
function glibcBinary(req: NodeJS.Require): Koffi | undefined {
  const musl = MUSL_ARCH[process.arch]
  if (process.platform !== 'linux' || !musl || existsSync(`/lib/ld-musl-${musl}.so.1`)) return undefined
  const rel = `@koromix/koffi-linux-${process.arch}/linux_${process.arch}/koffi.node`
  for (const dir of req.resolve.paths('koffi') ?? []) {
    const file = `${dir}/${rel}`
    if (!existsSync(file)) continue
    try {
      const native = req(file) as Koffi & {version?: unknown}
      return typeof native.version === 'string' && native.version.startsWith('3.') ? native : undefined
    } catch {
      return undefined
    }
  }
  return undefined
}

/**
 * The kernel calls, or undefined when koffi cannot load (warned once). Loads on first use,
 * synchronously. Never throws.
 */
export function kernel(): Kernel | undefined {
  if (loaded !== undefined) return loaded ?? undefined
  try {
    loaded = bind(loadKoffi())
  } catch (error) {
    loaded = null
    const why = error instanceof Error ? error.message.split('\n')[0] : String(error)
    warn(`koffi could not load (${why}): holes are read and copied as data, and TRIM and WRITE_ZEROES write zeros instead of freeing blocks`)
  }
  return loaded ?? undefined
}

/** @internal For tests: forget the loaded (or failed) binding, so kernel() tries again. */
export function resetKernelForTest(): void {
  loaded = undefined
}

/** Zeroing calls on koffi's worker threads at once; the rest wait their turn. */
const ASYNC_MAX = 64
let running = 0
const waiting: Array<() => void> = []

function bind(k: Koffi): Kernel {
  const libc = k.load('libc.so.6')
  const lseek = libc.func('int64_t lseek(int fd, int64_t offset, int whence)')
  const fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)')
  const ioctl = libc.func('int ioctl(int fd, unsigned long request, _Inout_ uint64_t *range)')
  const copyRange = libc.func('int64_t copy_file_range(int fd_in, _Inout_ int64_t *off_in, int fd_out, _Inout_ int64_t *off_out, size_t len, unsigned int flags)')
  const big = (v: unknown): number => Number(v)
  const mallocTrim = ((): Fn | undefined => {
    try {
      return libc.func('int malloc_trim(size_t pad)')
    } catch {
      return undefined // a libc without it: its malloc hands memory back as it sees fit
    }
  })()

  /**
   * Run `fn` on a worker thread; on -1, once more here to read errno. At most ASYNC_MAX at
   * once (koffi throws past its queue of 256): a burst of TRIMs from many connections waits.
   */
  const idempotent = async (name: string, fn: Fn, args: unknown[]): Promise<void> => {
    while (running >= ASYNC_MAX) await new Promise<void>((r) => waiting.push(r))
    running++
    let r: number
    try {
      r = big(await promisify<unknown>((cb: (e: unknown, v: unknown) => void) => fn.async(...args, cb))())
    } finally {
      running--
      waiting.shift()?.()
    }
    if (r === 0) return
    const again = big(fn(...args))
    if (again === 0) return
    throw new KernelError(name, k.errno())
  }

  /** One copy_file_range call on a worker thread (queued like the zeroing calls). */
  const copyOnce = async (fdIn: number, inOffset: number, fdOut: number, outOffset: number, length: number): Promise<number> => {
    while (running >= ASYNC_MAX) await new Promise<void>((r) => waiting.push(r))
    running++
    let r: number
    try {
      r = big(await promisify<unknown>((cb: (e: unknown, v: unknown) => void) => copyRange.async(fdIn, [inOffset], fdOut, [outOffset], length, 0, cb))())
    } finally {
      running--
      waiting.shift()?.()
    }
    if (r >= 0) return r
    // errno is the worker's: once more here to learn it (a copy of the same bytes to the
    // same place: idempotent; a refusal such as EXDEV is quick).
    const again = big(copyRange(fdIn, [inOffset], fdOut, [outOffset], length, 0))
    if (again >= 0) return again
    throw new KernelError('copy_file_range', k.errno())
  }
  const copyFileRange = async (fdIn: number, inOffset: number, fdOut: number, outOffset: number, length: number): Promise<number> => {
    let done = 0
    while (done < length) {
      const n = await copyOnce(fdIn, inOffset + done, fdOut, outOffset + done, length - done)
      if (n === 0) break // fdIn's end
      done += n
    }
    return done
  }

  // cachestat(fd, &{off, len}, &{nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted}, 0)
  let syscall: Fn | undefined
  try {
    if (process.arch === 'x64' || process.arch === 'arm64') syscall = libc.func('long syscall(long number, ...)')
  } catch {
    syscall = undefined
  }
  // A libc without getpagesize must not cost the other calls: 4 KiB, the smallest page there is.
  const pageSize = ((): number => {
    try {
      return big(libc.func('int getpagesize(void)')())
    } catch {
      return 4096
    }
  })()
  const csRange = Buffer.alloc(16)
  const csStat = Buffer.alloc(40)
  const u64 = (b: Buffer, at: number, v: number): void => {
    b.writeUInt32LE(v % 2 ** 32, at)
    b.writeUInt32LE(Math.floor(v / 2 ** 32), at + 4)
  }
  const pagesCached = (fd: number, offset: number, length: number): boolean | undefined => {
    if (!syscall || length <= 0) return undefined
    u64(csRange, 0, offset)
    u64(csRange, 8, length)
    if (big(syscall(SYS_CACHESTAT, 'int', fd, 'void *', csRange, 'void *', csStat, 'uint', 0)) !== 0) {
      const e = k.errno()
      // ENOSYS (before 6.5) or EPERM (a seccomp filter): not asked again. Anything else
      // (EBADF for hugetlbfs, say) is this file's alone.
      if (e === 38 || e === 1) syscall = undefined
      return undefined
    }
    const pages = Math.ceil((offset + length) / pageSize) - Math.floor(offset / pageSize)
    return csStat.readUInt32LE(0) + csStat.readUInt32LE(4) * 2 ** 32 >= pages
  }

  const seek = (fd: number, offset: number, whence: number, name: string): number => {
    const r = big(lseek(fd, offset, whence))
    if (r >= 0) return r
    const e = k.errno()
    if (e === 6) return -1 // ENXIO: no data (or no hole) at or after offset
    throw new KernelError(name, e)
  }

  return {
    seekData: (fd, offset) => seek(fd, offset, SEEK_DATA, 'lseek(SEEK_DATA)'),
    seekHole: (fd, offset) => seek(fd, offset, SEEK_HOLE, 'lseek(SEEK_HOLE)'),
    punchHole: (fd, offset, length) => idempotent('fallocate(PUNCH_HOLE)', fallocate, [fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length]),
    zeroRange: (fd, offset, length) => idempotent('fallocate(ZERO_RANGE)', fallocate, [fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length]),
    blkZeroOut: (fd, offset, length) => idempotent('ioctl(BLKZEROOUT)', ioctl, [fd, BLKZEROOUT, [offset, length]]),
    blkDiscard: (fd, offset, length) => idempotent('ioctl(BLKDISCARD)', ioctl, [fd, BLKDISCARD, [offset, length]]),
    copyFileRange,
    mallocTrim: mallocTrim && (() => big(mallocTrim(0)) === 1),
    pagesCached,
  }
}
