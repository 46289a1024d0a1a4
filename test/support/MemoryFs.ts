/**
 * MemoryFs: an in-memory DurableFs that knows what would survive power loss — the tool every
 * crash test stands on (after dm-log-writes, CrashMonkey, ALICE and SQLite's crash VFS), and
 * the in-memory test volume backend.
 *
 * Notes on the design (the contract of DurableFs, and no more):
 * - A file is an inode with a VOLATILE content (what reads see now) and a DURABLE one (what
 *   survives power loss), plus the ordered list of its writes and truncates since its last
 *   datasync (each write keeps a copy of its data only while it is pending).
 * - datasync(file) makes durable that file's pending ops that completed before the call, and
 *   nothing else: it orders only its own file.
 * - A directory has a volatile name → inode table. create, rename and unlink change it at
 *   once and are pending until fsyncDir(dir); a rename (one atomic op, also across
 *   directories) waits for the fsyncDir of its target's directory. A rename or unlink that
 *   lands removes a name only if it still names the same inode.
 * - Name tables after a crash are the replay, in issue order, of the name ops that are durable
 *   or chosen to land — never "durable ones first": a rename out of /e made durable by
 *   fsyncDir(/d) must not be undone by an older, still pending create in /e. So name ops are
 *   kept in one log in issue order; the prefix that is all durable is folded into a base
 *   table per directory (fsyncs keep the log short).
 * - A directory made by mkdirp is a name op in its parent, like a create: after a crash it
 *   exists only if that op is durable (fsyncDir of the parent) or lands, and its parent
 *   exists; the entries inside a directory that did not survive are lost with it, fsynced or
 *   not (as on ext4 and xfs: a new directory needs its parent's fsync). Each directory level
 *   made is one op ('mkdir'). Directories are never removed. seedDir() and seedFile() make
 *   durable directories, for the state a scenario starts from.
 * - crash(choice) returns a new, independent MemoryFs whose durable and volatile states are
 *   the old durable state plus the chosen pending ops, applied in their original (global)
 *   order, with no pending ops. A chosen torn write lands only a prefix of whole units.
 * - Inodes no name can reach after any crash (unlinked or replaced, closed, and the change
 *   durable) are dropped with their pending ops.
 * - Contents are Buffers that grow by doubling and are shared copy-on-write between a fs and
 *   its crash snapshots, so a snapshot costs only the files that differ.
 * - capacity (optional) counts allocated bytes: bytes written or seeded and not truncated
 *   away, in files that are still linked or open. Holes (a truncate that grows, a write past
 *   the end) are free, as on a file system with sparse files. A crash snapshot keeps each
 *   surviving file's allocation as it was in the live fs, clipped to its new size.
 *
 * - holes (MemoryFsOptions.holes): files have holes, as a file system with SEEK_DATA and
 *   PUNCH_HOLE has them: each handle offers DurableFile.holes (seekData, seekHole,
 *   punchHole), byte-exact. A punch reads as zeros at once and is a pending op like a write
 *   (a crash lands it or not; datasync makes it durable). After a crash a file's allocation
 *   is the live one, plus every range a pending write, punch or truncate of it touched,
 *   landed or not (reported as data: never a hole where a read could return data). A seeded
 *   file is allocated where its content is not zero (4 KiB blocks, like cp --sparse=always).
 *
 * onOp is awaited before each mutating op takes effect: a test can hold an op (await a
 * promise), or stop the run there (throw: the op does not happen). opCount counts the op
 * before the hook runs, so the hook sees its own op's number. crash() from inside the hook
 * gives the state just before that op.
 */
import {posix} from 'node:path'
import {alignedMemory, DIRECT_ALIGN} from '../../src/volume/alignedBuffer.js'
import {landing, type CrashChoice, type PendingOp, tornLength} from './CrashState.js'
import type {DurableFile, DurableFs, FileHoles, FileStat, OpenOptions} from '../../src/io/DurableFs.js'

export {enumerateCrashStates, MAX_CRASH_STATES} from './CrashState.js'
export type {CrashChoice, PendingOp, TearUnit, TornChoice} from './CrashState.js'

/** A mutating operation, as onOp sees it before it takes effect. */
export type FsOp = {
  kind: 'write' | 'punch' | 'datasync' | 'rename' | 'fsyncDir' | 'unlink' | 'truncate' | 'create' | 'mkdir'
  path: string
  offset?: number
  length?: number
  /** A rename's new name. */
  to?: string
}

export interface MemoryFsOptions {
  /** The atomic unit of the device: a torn write never splits one. Default 512. */
  sectorSize?: number
  /** Allocated bytes allowed in all files; a write past it fails with ENOSPC. Default: unlimited. */
  capacity?: number
  /** Files have holes: handles offer DurableFile.holes (SEEK_DATA, SEEK_HOLE, PUNCH_HOLE). Default false. */
  holes?: boolean
}

// ---------------------------------------------------------------------------------------
// Contents: growable buffers, shared copy-on-write. Invariant: buf[size..] is all zero.

class Content {
  /** Holders (inode slots, in any fs) sharing this buffer; a holder copies before it writes when > 1. */
  refs = 1
  constructor(
    public buf: Buffer,
    public size: number,
  ) {}
}

/** `c` if this holder may write it and it has room for `need` bytes, else a private copy that has. */
function owned(c: Content, need: number): Content {
  if (c.refs > 1) {
    c.refs--
    const buf = Buffer.alloc(Math.max(need, c.size))
    c.buf.copy(buf, 0, 0, c.size)
    return new Content(buf, c.size)
  }
  if (c.buf.length < need) {
    const buf = Buffer.alloc(Math.max(need, c.buf.length * 2, 4096))
    c.buf.copy(buf, 0, 0, c.size)
    c.buf = buf
  }
  return c
}

function writeAt(c: Content, offset: number, data: Uint8Array): Content {
  const o = owned(c, offset + data.byteLength)
  o.buf.set(data, offset)
  o.size = Math.max(o.size, offset + data.byteLength)
  return o
}

function truncateTo(c: Content, size: number): Content {
  if (size === c.size) return c
  const o = owned(c, size)
  if (size < o.size) o.buf.fill(0, size, o.size)
  o.size = size
  return o
}

/** Zeros over [offset, offset+length) within the size (a punch keeps the size). */
function zeroAt(c: Content, offset: number, length: number): Content {
  const end = Math.min(offset + length, c.size)
  if (end <= offset) return c
  const o = owned(c, end)
  o.buf.fill(0, offset, end)
  return o
}

function shared(c: Content, holders: number): Content {
  c.refs += holders
  return c
}

// ---------------------------------------------------------------------------------------
// Allocation (only tracked with a capacity): sorted, disjoint, non-adjacent [start, end) pairs.

type Ranges = Array<[number, number]>

/** Bytes of [s, e) not yet in `r`. */
function unallocated(r: Ranges, s: number, e: number): number {
  let covered = 0
  for (const [a, b] of r) {
    if (a >= e) break
    if (b > s) covered += Math.min(b, e) - Math.max(a, s)
  }
  return e - s - covered
}

function allocate(r: Ranges, s: number, e: number): Ranges {
  const out: Ranges = []
  let i = 0
  while (i < r.length && r[i][1] < s) out.push(r[i++])
  let a = s
  let b = e
  while (i < r.length && r[i][0] <= e) {
    a = Math.min(a, r[i][0])
    b = Math.max(b, r[i][1])
    i++
  }
  out.push([a, b])
  while (i < r.length) out.push(r[i++])
  return out
}

/** `r` without [s, e). */
function release(r: Ranges, s: number, e: number): Ranges {
  const out: Ranges = []
  for (const [a, b] of r) {
    if (b <= s || a >= e) out.push([a, b])
    else {
      if (a < s) out.push([a, s])
      if (b > e) out.push([e, b])
    }
  }
  return out
}

function clip(r: Ranges, size: number): Ranges {
  const out: Ranges = []
  for (const [a, b] of r) if (a < size) out.push([a, Math.min(b, size)])
  return out
}

function allocatedBytes(r: Ranges): number {
  let n = 0
  for (const [a, b] of r) n += b - a
  return n
}

/** The 4 KiB blocks of buf[0, size) that are not all zero, as ranges (a sparse copy of it). */
function nonZeroBlocks(buf: Buffer, size: number): Ranges {
  let r: Ranges = []
  for (let a = 0; a < size; a += 4096) {
    const b = Math.min(a + 4096, size)
    if (buf.subarray(a, b).some((v) => v !== 0)) r = allocate(r, a, b)
  }
  return r
}

// ---------------------------------------------------------------------------------------
// Inodes, directories and pending ops.

type FileOp = {seq: number; path: string} & ({kind: 'write'; offset: number; data: Buffer} | {kind: 'truncate'; size: number} | {kind: 'punch'; offset: number; length: number})

/** `dir` is the directory whose fsyncDir makes the op durable (a rename's target's). */
type NameOp = {seq: number; dir: string; ino: number} & (
  | {kind: 'create'; name: string}
  | {kind: 'unlink'; name: string}
  | {kind: 'rename'; fromDir: string; from: string; to: string}
  | {kind: 'mkdir'; name: string}
)

interface Inode {
  readonly ino: number
  vol: Content
  dur: Content
  /** Writes and truncates since the last datasync, in order. */
  pending: FileOp[]
  mtime: number
  /** Names in volatile tables. */
  links: number
  /** Open handles. */
  opens: number
  /** Allocated byte ranges (with a capacity or holes only). */
  alloc: Ranges
  /** Neither linked nor open: its bytes no longer count against the capacity. */
  released: boolean
}

interface Dir {
  readonly ino: number
  vol: Map<string, number>
  /** The names as of the start of the name log (every op folded into it was durable). */
  base: Map<string, number>
  /** Its own entry in its parent is durable (its mkdir op folded, or seeded). */
  durable: boolean
}

/** Apply a name op to name tables (volatile, durable, or a crash state's). A mkdir changes no file table. */
/**
 * A file's allocation after a crash, in a MemoryFs with holes: the live one plus every range
 * a pending op touched (landed or not, it may hold data): data where unsure, never a hole
 * where a read could find data.
 */
function uncertain(node: Inode): Ranges {
  let r = node.alloc
  for (const op of node.pending) {
    if (op.kind === 'write') r = allocate(r, op.offset, op.offset + op.data.length)
    else if (op.kind === 'punch') r = allocate(r, op.offset, op.offset + op.length)
    else r = allocate(r, Math.min(op.size, node.vol.size), Math.max(node.dur.size, node.vol.size, op.size))
  }
  return r
}

function applyName(op: NameOp, table: (dir: string) => Map<string, number>): void {
  switch (op.kind) {
    case 'mkdir':
      break
    case 'create':
      table(op.dir).set(op.name, op.ino)
      break
    case 'unlink': {
      const t = table(op.dir)
      if (t.get(op.name) === op.ino) t.delete(op.name)
      break
    }
    case 'rename': {
      const f = table(op.fromDir)
      if (f.get(op.from) === op.ino) f.delete(op.from)
      table(op.dir).set(op.to, op.ino)
      break
    }
  }
}

const MESSAGES: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EEXIST: 'file already exists',
  EBADF: 'bad file descriptor',
  ENOSPC: 'no space left on device',
  EISDIR: 'illegal operation on a directory',
  ENOTDIR: 'not a directory',
  EINVAL: 'invalid argument',
}

/** An error shaped like Node's system errors (code, syscall, path). */
function fsError(code: string, syscall: string, path: string, dest?: string): NodeJS.ErrnoException {
  const where = dest === undefined ? `'${path}'` : `'${path}' -> '${dest}'`
  return Object.assign(new Error(`${code}: ${MESSAGES[code] ?? 'error'}, ${syscall} ${where}`), {code, syscall, path, ...(dest === undefined ? {} : {dest})})
}

function norm(path: string): string {
  return posix.resolve('/', path)
}

function checkPosition(n: number, syscall: string, path: string): void {
  if (!Number.isSafeInteger(n) || n < 0) throw fsError('EINVAL', syscall, path)
}

// ---------------------------------------------------------------------------------------

export class MemoryFs implements DurableFs {
  /** The atomic unit of the device (bytes): a torn write never splits one. */
  readonly sectorSize: number
  /** Allocated bytes allowed; undefined when unlimited. */
  readonly capacity: number | undefined
  /** Files have holes (MemoryFsOptions.holes). */
  readonly holes: boolean
  /** Allocation is tracked: with a capacity, or holes. */
  private readonly tracks: boolean
  /** Called (and awaited) before each mutating op takes effect; may hold it, or throw to stop it. */
  onOp?: (op: FsOp) => void | Promise<void>

  private readonly inodes = new Map<number, Inode>()
  private readonly dirs = new Map<string, Dir>()
  /** Name ops since the base tables, in issue order; the first one, if any, is pending. */
  private nameLog: Array<{op: NameOp; durable: boolean}> = []
  /** Inodes released but maybe still reachable after a crash (durable name or pending name op). */
  private readonly unreachableCandidates = new Set<Inode>()
  private nextIno = 2
  private clock = 1
  private seq = 0
  private pendingTotal = 0
  private ops = 0
  private allocated = 0
  private pendingCache?: {seq: number; total: number; list: ReadonlyArray<{ino: number; op: FileOp | NameOp}>}
  /** Reads and writes done through openDirect handles: a test asserts the O_DIRECT path was taken. */
  directReads = 0
  directWrites = 0

  constructor(opts: MemoryFsOptions = {}) {
    const sector = opts.sectorSize ?? 512
    if (!Number.isSafeInteger(sector) || sector < 512 || (sector & (sector - 1)) !== 0)
      throw new RangeError(`MemoryFs sectorSize must be a power of two ≥ 512, not ${sector}`)
    if (opts.capacity !== undefined && !(opts.capacity >= 0)) throw new RangeError(`MemoryFs capacity must be a byte count, not ${opts.capacity}`)
    this.sectorSize = sector
    this.capacity = opts.capacity
    this.holes = opts.holes ?? false
    this.tracks = this.capacity !== undefined || this.holes
    this.dirs.set('/', {ino: 1, vol: new Map(), base: new Map(), durable: true})
  }

  /** Count of mutating ops so far (creates, writes, truncates, datasyncs, renames, unlinks, fsyncDirs). */
  get opCount(): number {
    return this.ops
  }

  /** Number of pending (not yet durable) ops: writes, truncates, creates, renames, unlinks. */
  pendingCount(): number {
    return this.pendingTotal
  }

  /** The pending ops in global order: what a CrashChoice's indices refer to. */
  pendingOps(): PendingOp[] {
    return this.pendingList().map((p, index): PendingOp => {
      if ('data' in p.op) return {index, kind: 'write', path: p.op.path, offset: p.op.offset, length: p.op.data.length}
      if (p.op.kind === 'punch') return {index, kind: 'punch', path: p.op.path, offset: p.op.offset, length: p.op.length}
      if ('size' in p.op) return {index, kind: 'truncate', path: p.op.path, length: p.op.size}
      if (p.op.kind === 'rename') return {index, kind: 'rename', path: posix.join(p.op.fromDir, p.op.from), to: posix.join(p.op.dir, p.op.to)}
      if (p.op.kind === 'mkdir') return {index, kind: 'mkdir', path: posix.join(p.op.dir, p.op.name)}
      return {index, kind: p.op.kind, path: posix.join(p.op.dir, p.op.name)}
    })
  }

  /** Bytes allocated in linked or open files (tracked only with a capacity or holes; 0 otherwise). */
  get usedBytes(): number {
    return this.allocated
  }

  // -- test conveniences -----------------------------------------------------------------

  /** A durable directory (and its missing parents), as if made and fsynced before the scenario. */
  seedDir(path: string): void {
    this.mkdirSync(norm(path))
  }

  /** A durable file with this content (already synced, its name durable), replacing any. Makes missing directories, durably. */
  seedFile(path: string, content: Uint8Array): void {
    const p = norm(path)
    if (this.dirs.has(p)) throw fsError('EISDIR', 'open', p)
    const dirPath = posix.dirname(p)
    const name = posix.basename(p)
    this.mkdirSync(dirPath)
    const dir = this.dirs.get(dirPath)!
    const old = dir.vol.get(name)
    const c = new Content(Buffer.from(content), content.byteLength)
    const node = this.newInode(c)
    if (this.tracks && content.byteLength > 0) {
      node.alloc = this.holes ? nonZeroBlocks(c.buf, content.byteLength) : [[0, content.byteLength]]
      this.allocated += allocatedBytes(node.alloc)
    }
    dir.vol.set(name, node.ino)
    node.links = 1
    // A durable create, in issue order after everything before it.
    this.nameLog.push({op: {seq: this.seq++, kind: 'create', dir: dirPath, name, ino: node.ino}, durable: true})
    this.fold()
    if (old !== undefined) this.unlinked(old)
  }

  /** Current (volatile) content of a file: a copy. */
  contentOf(path: string): Buffer {
    const p = norm(path)
    const node = this.lookup(p)
    if (!node) throw fsError(this.dirs.has(p) ? 'EISDIR' : 'ENOENT', 'open', p)
    return Buffer.from(node.vol.buf.subarray(0, node.vol.size))
  }

  // -- crash -----------------------------------------------------------------------------

  /**
   * A snapshot of what survives power loss now under `choice` (default: only the durable
   * state): a new, independent MemoryFs with no pending ops, the same options and no onOp.
   * Pending ops that land are applied in their original order. Does not change this fs.
   */
  crash(choice: CrashChoice = {kind: 'durable'}): MemoryFs {
    const list = this.pendingList()
    const lands = landing(list.length, choice)
    let tornIndex = -1
    let tornBytes = 0
    if (choice.torn) {
      const t = choice.torn
      const p = list[t.index]
      if (!p || !('data' in p.op)) throw new RangeError(`torn index ${t.index} is not a pending write (${list.length} pending ops)`)
      if (t.at !== 512 && t.at !== 4096) throw new RangeError(`a torn write is cut at 512 or 4096 bytes, not ${String(t.at)}`)
      tornIndex = t.index
      tornBytes = tornLength(p.op.offset, p.op.data.length, t, this.sectorSize, choice.kind === 'subset' ? choice.seed : 0)
    }

    // Files start from their durable content (copied only when a landing op changes it);
    // names from the base, then every durable or landing name op in issue order.
    const landed = new Set<NameOp>()
    const tables = new Map<string, Map<string, number>>()
    for (const [path, d] of this.dirs) tables.set(path, new Map(d.base))
    const made = new Set<string>()
    for (const [path, d] of this.dirs) if (d.durable) made.add(path)
    const contents = new Map<number, Content>()
    const contentFor = (ino: number): Content => {
      let c = contents.get(ino)
      if (!c) {
        const d = this.inodes.get(ino)!.dur
        c = new Content(Buffer.from(d.buf.subarray(0, d.size)), d.size)
        contents.set(ino, c)
      }
      return c
    }
    list.forEach((p, i) => {
      if (!lands[i] && i !== tornIndex) return
      if ('data' in p.op) {
        const data = i === tornIndex ? p.op.data.subarray(0, tornBytes) : p.op.data
        contents.set(p.ino, writeAt(contentFor(p.ino), p.op.offset, data))
      } else if (p.op.kind === 'punch') {
        contents.set(p.ino, zeroAt(contentFor(p.ino), p.op.offset, p.op.length))
      } else if ('size' in p.op) {
        contents.set(p.ino, truncateTo(contentFor(p.ino), p.op.size))
      } else {
        landed.add(p.op)
      }
    })
    for (const e of this.nameLog) {
      if (!e.durable && !landed.has(e.op)) continue
      if (e.op.kind === 'mkdir') made.add(posix.join(e.op.dir, e.op.name))
      applyName(e.op, (d) => tables.get(d)!)
    }
    // A directory survives if its own entry did and its parent survives; what was in one that
    // did not is gone with it.
    const survives = (path: string): boolean => path === '/' || (made.has(path) && survives(posix.dirname(path)))
    for (const path of [...tables.keys()]) if (!survives(path)) tables.delete(path)

    const out = new MemoryFs({sectorSize: this.sectorSize, capacity: this.capacity, holes: this.holes})
    out.nextIno = this.nextIno
    out.clock = this.clock
    out.dirs.clear()
    const links = new Map<number, number>()
    for (const [path, t] of tables) {
      out.dirs.set(path, {ino: this.dirs.get(path)!.ino, vol: new Map(t), base: t, durable: true})
      for (const ino of t.values()) links.set(ino, (links.get(ino) ?? 0) + 1)
    }
    for (const [ino, n] of links) {
      const src = this.inodes.get(ino)!
      const own = contents.get(ino)
      // vol and dur of the new inode share one content; an unchanged one is shared with this fs too.
      const c = own ? shared(own, 1) : shared(src.dur, 2)
      const alloc = !this.tracks ? [] : clip(this.holes ? uncertain(src) : src.alloc, c.size)
      out.inodes.set(ino, {ino, vol: c, dur: c, pending: [], mtime: src.mtime, links: n, opens: 0, alloc, released: false})
      out.allocated += allocatedBytes(alloc)
    }
    return out
  }

  // -- DurableFs -------------------------------------------------------------------------

  async open(path: string, o: OpenOptions = {}): Promise<DurableFile> {
    const p = norm(path)
    if (this.dirs.has(p)) throw fsError('EISDIR', 'open', p)
    let node = this.lookup(p)
    if (node && o.create === 'new') throw fsError('EEXIST', 'open', p)
    if (!node) {
      if (!o.create) throw fsError('ENOENT', 'open', p)
      const dir = this.dirs.get(posix.dirname(p))
      if (!dir) throw fsError('ENOENT', 'open', p)
      await this.op({kind: 'create', path: p})
      // Another open may have made it while the hook ran.
      node = this.lookup(p)
      if (node && o.create === 'new') throw fsError('EEXIST', 'open', p)
      if (!node) {
        node = this.newInode(new Content(Buffer.alloc(0), 0))
        node.links = 1
        dir.vol.set(posix.basename(p), node.ino)
        this.recordName({seq: 0, kind: 'create', dir: posix.dirname(p), name: posix.basename(p), ino: node.ino})
      }
    }
    node.opens++
    return new MemoryFile(this, p, node, Boolean(o.write))
  }

  /**
   * O_DIRECT, as Linux checks it: a second handle on an existing file whose every read and
   * write must be aligned (offset, length and memory to DIRECT_ALIGN) or fails with EINVAL,
   * so code that takes the direct path with a misaligned request fails here as on a real
   * disk. Its data is the file's, like the page cache's after the kernel writes it back, and
   * a write through it is pending until a datasync of any handle on the file, like any write.
   */
  async openDirect(path: string, o: {write: boolean} = {write: true}): Promise<DurableFile> {
    const p = norm(path)
    if (this.dirs.has(p)) throw fsError('EISDIR', 'open', p)
    const node = this.lookup(p)
    if (!node) throw fsError('ENOENT', 'open', p)
    node.opens++
    return new MemoryFile(this, p, node, o.write, true)
  }

  async rename(from: string, to: string): Promise<void> {
    const f = norm(from)
    const t = norm(to)
    this.checkRename(f, t)
    if (f === t) return
    await this.op({kind: 'rename', path: f, to: t})
    const node = this.checkRename(f, t)
    const fromDir = this.dirs.get(posix.dirname(f))!
    const toDir = this.dirs.get(posix.dirname(t))!
    fromDir.vol.delete(posix.basename(f))
    const old = toDir.vol.get(posix.basename(t))
    toDir.vol.set(posix.basename(t), node.ino)
    this.recordName({seq: 0, kind: 'rename', dir: posix.dirname(t), fromDir: posix.dirname(f), from: posix.basename(f), to: posix.basename(t), ino: node.ino})
    if (old !== undefined && old !== node.ino) this.unlinked(old)
  }

  async fsyncDir(dir: string): Promise<void> {
    const p = norm(dir)
    const d = this.dirs.get(p)
    if (!d) throw fsError(this.lookup(p) ? 'ENOTDIR' : 'ENOENT', 'fsync', p)
    const before = this.seq
    await this.op({kind: 'fsyncDir', path: p})
    for (const e of this.nameLog) {
      if (e.op.seq >= before) break
      if (e.durable || e.op.dir !== p) continue
      e.durable = true
      this.pendingTotal--
    }
    this.fold()
    this.collect()
  }

  async unlink(path: string): Promise<void> {
    const p = norm(path)
    if (this.dirs.has(p)) throw fsError('EISDIR', 'unlink', p)
    if (!this.lookup(p)) return // like NodeDurableFs (rm --force)
    await this.op({kind: 'unlink', path: p})
    const node = this.lookup(p)
    if (!node) return
    const dir = this.dirs.get(posix.dirname(p))!
    dir.vol.delete(posix.basename(p))
    this.recordName({seq: 0, kind: 'unlink', dir: posix.dirname(p), name: posix.basename(p), ino: node.ino})
    this.unlinked(node.ino)
  }

  /** Make the missing levels of `dir`, each one op, pending in its parent until fsyncDir(parent). */
  async mkdirp(dir: string): Promise<void> {
    const p = norm(dir)
    const missing: string[] = []
    for (let d = p; !this.dirs.has(d); d = posix.dirname(d)) missing.unshift(d)
    for (const d of missing) {
      const parent = posix.dirname(d)
      const name = posix.basename(d)
      if (this.dirs.get(parent)?.vol.has(name)) throw fsError('EEXIST', 'mkdir', d)
      await this.op({kind: 'mkdir', path: d})
      // Another mkdirp may have made it while the hook ran.
      if (this.dirs.has(d)) continue
      if (this.dirs.get(parent)!.vol.has(name)) throw fsError('EEXIST', 'mkdir', d)
      const node: Dir = {ino: this.nextIno++, vol: new Map(), base: new Map(), durable: false}
      this.dirs.set(d, node)
      this.recordName({seq: 0, kind: 'mkdir', dir: parent, name, ino: node.ino})
    }
  }

  async readdir(dir: string): Promise<string[]> {
    const p = norm(dir)
    const d = this.dirs.get(p)
    if (!d) throw fsError(this.lookup(p) ? 'ENOTDIR' : 'ENOENT', 'scandir', p)
    const names = [...d.vol.keys()]
    for (const sub of this.dirs.keys()) if (sub !== p && posix.dirname(sub) === p) names.push(posix.basename(sub))
    return names.sort()
  }

  async exists(path: string): Promise<boolean> {
    const p = norm(path)
    return this.dirs.has(p) || this.lookup(p) !== undefined
  }

  async stat(path: string): Promise<FileStat> {
    const p = norm(path)
    const d = this.dirs.get(p)
    if (d) return {dev: 1, ino: d.ino, size: 4096, mtimeMs: 0, ctimeMs: 0, isFile: false, isBlockDevice: false, rdev: 0}
    const node = this.lookup(p)
    if (!node) throw fsError('ENOENT', 'stat', p)
    return this.statOf(node)
  }

  async readFile(path: string): Promise<Buffer> {
    const p = norm(path)
    if (this.dirs.has(p)) throw fsError('EISDIR', 'read', p)
    if (!this.lookup(p)) throw fsError('ENOENT', 'open', p)
    return this.contentOf(p)
  }

  async realpath(path: string): Promise<string> {
    const p = norm(path)
    if (!(await this.exists(p))) throw fsError('ENOENT', 'realpath', p)
    return p
  }

  // -- used by MemoryFile (not part of the public API) ---------------------------------------

  /** @internal */
  statOf(node: Inode): FileStat {
    return {dev: 1, ino: node.ino, size: node.vol.size, mtimeMs: node.mtime, ctimeMs: node.mtime, isFile: true, isBlockDevice: false, rdev: 0}
  }

  /** @internal */
  async fileWrite(path: string, node: Inode, buf: Uint8Array, offset: number): Promise<void> {
    await this.op({kind: 'write', path, offset, length: buf.byteLength})
    if (buf.byteLength === 0) return
    const end = offset + buf.byteLength
    if (this.tracks) {
      const more = unallocated(node.alloc, offset, end)
      if (more > 0 && this.capacity !== undefined && this.allocated + more > this.capacity) throw fsError('ENOSPC', 'write', path)
      node.alloc = allocate(node.alloc, offset, end)
      this.allocated += more
    }
    const data = Buffer.from(buf)
    node.vol = writeAt(node.vol, offset, data)
    node.mtime = this.clock++
    this.recordFile(node, {seq: 0, path, kind: 'write', offset, data})
  }

  /** @internal */
  async fileTruncate(path: string, node: Inode, size: number): Promise<void> {
    await this.op({kind: 'truncate', path, length: size})
    if (this.tracks && size < node.vol.size) {
      const before = allocatedBytes(node.alloc)
      node.alloc = clip(node.alloc, size)
      this.allocated -= before - allocatedBytes(node.alloc)
    }
    node.vol = truncateTo(node.vol, size)
    node.mtime = this.clock++
    this.recordFile(node, {seq: 0, path, kind: 'truncate', size})
  }

  /** @internal fallocate(PUNCH_HOLE | KEEP_SIZE): reads as zeros at once, blocks freed; pending until datasync. */
  async filePunch(path: string, node: Inode, offset: number, length: number): Promise<void> {
    await this.op({kind: 'punch', path, offset, length})
    const end = Math.min(offset + length, node.vol.size)
    if (end <= offset) return
    const before = allocatedBytes(node.alloc)
    node.alloc = release(node.alloc, offset, end)
    this.allocated -= before - allocatedBytes(node.alloc)
    node.vol = zeroAt(node.vol, offset, end - offset)
    node.mtime = this.clock++
    this.recordFile(node, {seq: 0, path, kind: 'punch', offset, length: end - offset})
  }

  /** @internal lseek(SEEK_DATA): the first allocated byte at or after offset, -1 when none (ENXIO). */
  seekData(node: Inode, offset: number): number {
    for (const [a, b] of node.alloc) if (b > offset) return Math.max(a, offset) < node.vol.size ? Math.max(a, offset) : -1
    return -1
  }

  /** @internal lseek(SEEK_HOLE): the first byte at or after offset in a hole (the end of the file counts as one). */
  seekHole(node: Inode, offset: number): number {
    for (const [a, b] of node.alloc) {
      if (a > offset) break
      if (b > offset) return Math.min(b, node.vol.size)
    }
    return Math.min(offset, node.vol.size)
  }

  /** @internal datasync: this file's ops that completed before the call become durable. */
  async fileSync(path: string, node: Inode): Promise<void> {
    const before = this.seq
    await this.op({kind: 'datasync', path})
    let k = 0
    for (; k < node.pending.length && node.pending[k].seq < before; k++) {
      const p = node.pending[k]
      node.dur = 'data' in p ? writeAt(node.dur, p.offset, p.data) : p.kind === 'punch' ? zeroAt(node.dur, p.offset, p.length) : truncateTo(node.dur, p.size)
    }
    node.pending.splice(0, k)
    this.pendingTotal -= k
  }

  /** @internal */
  fileClosed(node: Inode): void {
    node.opens--
    this.maybeRelease(node)
  }

  // -- internals -------------------------------------------------------------------------

  private async op(op: FsOp): Promise<void> {
    this.ops++
    await this.onOp?.(op)
  }

  private lookup(p: string): Inode | undefined {
    const ino = this.dirs.get(posix.dirname(p))?.vol.get(posix.basename(p))
    return ino === undefined ? undefined : this.inodes.get(ino)
  }

  private checkRename(f: string, t: string): Inode {
    if (this.dirs.has(f)) throw fsError('EISDIR', 'rename', f, t) // MemoryFs does not rename directories
    const node = this.lookup(f)
    if (!node) throw fsError('ENOENT', 'rename', f, t)
    if (this.dirs.has(t)) throw fsError('EISDIR', 'rename', f, t)
    if (!this.dirs.has(posix.dirname(t))) throw fsError('ENOENT', 'rename', f, t)
    return node
  }

  private mkdirSync(p: string): void {
    if (this.dirs.has(p)) return
    const parent = posix.dirname(p)
    this.mkdirSync(parent)
    if (this.dirs.get(parent)!.vol.has(posix.basename(p))) throw fsError('EEXIST', 'mkdir', p)
    this.dirs.set(p, {ino: this.nextIno++, vol: new Map(), base: new Map(), durable: true})
  }

  /** A new inode whose volatile and durable contents are both `c` (a fresh content, now held twice). */
  private newInode(c: Content): Inode {
    const node: Inode = {ino: this.nextIno++, vol: c, dur: shared(c, 1), pending: [], mtime: this.clock++, links: 0, opens: 0, alloc: [], released: false}
    this.inodes.set(node.ino, node)
    return node
  }

  private recordName(op: NameOp): void {
    op.seq = this.seq++
    this.nameLog.push({op, durable: false})
    this.pendingTotal++
  }

  /** Fold the all-durable prefix of the name log into the base tables. */
  private fold(): void {
    let k = 0
    for (; k < this.nameLog.length && this.nameLog[k].durable; k++) {
      const op = this.nameLog[k].op
      if (op.kind === 'mkdir') this.dirs.get(posix.join(op.dir, op.name))!.durable = true
      else applyName(op, (d) => this.dirs.get(d)!.base)
    }
    if (k > 0) this.nameLog.splice(0, k)
  }

  private recordFile(node: Inode, op: FileOp): void {
    op.seq = this.seq++
    node.pending.push(op)
    this.pendingTotal++
  }

  /** A volatile name of inode `ino` went away. */
  private unlinked(ino: number): void {
    const node = this.inodes.get(ino)
    if (!node) return
    node.links--
    this.maybeRelease(node)
  }

  private maybeRelease(node: Inode): void {
    if (node.released || node.links > 0 || node.opens > 0) return
    node.released = true
    this.allocated -= allocatedBytes(node.alloc)
    this.unreachableCandidates.add(node)
    this.collect()
  }

  /** Drop released inodes that no crash can bring back: no durable name, no pending name op. */
  private collect(): void {
    if (this.unreachableCandidates.size === 0) return
    // Reachable: named in the durable tables (base + durable log), or by a pending name op.
    const durable = new Map<string, Map<string, number>>()
    for (const [path, d] of this.dirs) durable.set(path, new Map(d.base))
    const reachable = new Set<number>()
    for (const e of this.nameLog) {
      if (e.durable) applyName(e.op, (d) => durable.get(d)!)
      else reachable.add(e.op.ino)
    }
    for (const t of durable.values()) for (const ino of t.values()) reachable.add(ino)
    for (const node of this.unreachableCandidates) {
      if (reachable.has(node.ino)) continue
      this.inodes.delete(node.ino)
      this.pendingTotal -= node.pending.length
      node.pending = []
      this.unreachableCandidates.delete(node)
    }
  }

  /**
   * Every pending op with its inode, in global (issue) order. Cached: (seq, pendingTotal)
   * names the pending set, since ops are only added (seq grows) or retired (the total shrinks).
   */
  private pendingList(): ReadonlyArray<{ino: number; op: FileOp | NameOp}> {
    const c = this.pendingCache
    if (c && c.seq === this.seq && c.total === this.pendingTotal) return c.list
    const out: Array<{ino: number; op: FileOp | NameOp}> = []
    for (const node of this.inodes.values()) for (const op of node.pending) out.push({ino: node.ino, op})
    for (const e of this.nameLog) if (!e.durable) out.push({ino: e.op.ino, op: e.op})
    out.sort((a, b) => a.op.seq - b.op.seq)
    this.pendingCache = {seq: this.seq, total: this.pendingTotal, list: out}
    return out
  }
}

class MemoryFile implements DurableFile {
  private closed = false
  readonly holes?: FileHoles

  constructor(
    private readonly fs: MemoryFs,
    readonly path: string,
    private readonly node: Inode,
    private readonly writable: boolean,
    private readonly direct = false,
  ) {
    if (fs.holes)
      this.holes = {
        seekData: (offset) => {
          this.live('lseek')
          return fs.seekData(node, offset)
        },
        seekHole: (offset) => {
          this.live('lseek')
          return fs.seekHole(node, offset)
        },
        punchHole: async (offset, length) => {
          this.live('fallocate')
          if (!this.writable) throw fsError('EBADF', 'fallocate', this.path)
          checkPosition(offset, 'fallocate', this.path)
          checkPosition(length, 'fallocate', this.path)
          await fs.filePunch(this.path, node, offset, length)
        },
      }
  }

  private live(syscall: string): void {
    if (this.closed) throw fsError('EBADF', syscall, this.path)
  }

  /** O_DIRECT's rule: offset, length and memory aligned, else EINVAL (and nothing is done). */
  private aligned(syscall: string, buf: Uint8Array, position: number, length: number): void {
    if (!this.direct) return
    if (position % DIRECT_ALIGN !== 0 || length % DIRECT_ALIGN !== 0 || !alignedMemory(buf)) throw fsError('EINVAL', syscall, this.path)
    if (syscall === 'read') this.fs.directReads++
    else this.fs.directWrites++
  }

  async read(buf: Uint8Array, position: number, length = buf.byteLength): Promise<number> {
    this.live('read')
    checkPosition(position, 'read', this.path)
    if (!Number.isSafeInteger(length) || length < 0 || length > buf.byteLength)
      throw new RangeError(`read of ${length} bytes into a ${buf.byteLength}-byte buffer (${this.path})`)
    this.aligned('read', buf, position, length)
    const c = this.node.vol
    const n = Math.max(0, Math.min(length, c.size - position))
    if (n > 0) buf.set(c.buf.subarray(position, position + n), 0)
    return n
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    this.live('write')
    if (!this.writable) throw fsError('EBADF', 'write', this.path)
    checkPosition(position, 'write', this.path)
    this.aligned('write', buf, position, buf.byteLength)
    await this.fs.fileWrite(this.path, this.node, buf, position)
  }

  async datasync(): Promise<void> {
    this.live('fdatasync')
    await this.fs.fileSync(this.path, this.node)
  }

  async size(): Promise<number> {
    this.live('fstat')
    return this.node.vol.size
  }

  async truncate(length: number): Promise<void> {
    this.live('ftruncate')
    if (!this.writable) throw fsError('EINVAL', 'ftruncate', this.path)
    checkPosition(length, 'ftruncate', this.path)
    await this.fs.fileTruncate(this.path, this.node, length)
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.fs.fileClosed(this.node)
  }
}
