/**
 * An in-memory DurableFs that knows what is durable, for crash tests (after dm-log-writes,
 * CrashMonkey, ALICE and SQLite's crash VFS), and the in-memory test volume backend.
 *
 * Model (the contract of DurableFs):
 * - each file (inode) has a volatile content (what reads see) and a durable one; a write or
 *   truncate is pending until datasync() of that file, which makes that file's pending
 *   operations durable and nothing else;
 * - each directory has volatile and durable name tables; creating, renaming or unlinking a
 *   name is pending until fsyncDir() of that directory;
 * - directories themselves are durable once made (the state directory exists beforehand).
 * crash(choice) returns a new, independent MemoryFs holding the durable state plus a chosen
 * subset of the pending operations, applied in their original order; one chosen write may be
 * torn at a sector boundary.
 */
import {basename, dirname} from 'node:path'
import type {DurableFile, DurableFs, FileStat, OpenOptions} from './DurableFs.js'

type Pending =
  | {kind: 'write'; ino: number; offset: number; data: Buffer}
  | {kind: 'truncate'; ino: number; size: number}
  | {kind: 'name'; dir: string; name: string; ino: number | undefined}

export type FsOp = {kind: 'write' | 'datasync' | 'rename' | 'fsyncDir' | 'unlink' | 'truncate' | 'create'; path: string; offset?: number; length?: number}

export type CrashChoice = (
  | {kind: 'durable'}
  | {kind: 'all'}
  | {kind: 'subset'; seed: number}
  | {kind: 'all-but-one'; index: number}
  | {kind: 'prefix'; count: number}
) & {torn?: {index: number; sectors: number}}

interface Inode {
  ino: number
  data: Buffer
  size: number
  durable: Buffer
  durableSize: number
  mtime: number
}

function errno(code: string, path: string): Error {
  return Object.assign(new Error(`${code}: ${path}`), {code})
}

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function grow(buf: Buffer, size: number): Buffer {
  if (buf.length >= size) return buf
  const n = Buffer.alloc(Math.max(size, buf.length * 2))
  buf.copy(n)
  return n
}

function applyWrite(target: {data: Buffer; size: number}, offset: number, data: Buffer): void {
  target.data = grow(target.data, offset + data.length)
  data.copy(target.data, offset)
  target.size = Math.max(target.size, offset + data.length)
}

function applyTruncate(target: {data: Buffer; size: number}, size: number): void {
  target.data = grow(target.data, size)
  if (size < target.size) target.data.fill(0, size, target.size)
  target.size = size
}

export class MemoryFs implements DurableFs {
  private readonly inodes = new Map<number, Inode>()
  private readonly dirs = new Map<string, {volatile: Map<string, number>; durable: Map<string, number>}>()
  private pending: Pending[] = []
  private nextIno = 1
  private clock = 1
  opCount = 0
  /** Called before each mutating operation; may wait (hold the op) or throw (stop the run). */
  onOp?: (op: FsOp) => void | Promise<void>

  constructor(readonly opts: {sectorSize?: number; capacity?: number} = {}) {}

  private dir(path: string): {volatile: Map<string, number>; durable: Map<string, number>} {
    const d = this.dirs.get(path)
    if (!d) throw errno('ENOENT', path)
    return d
  }

  private lookup(path: string): Inode | undefined {
    const d = this.dirs.get(dirname(path))
    const ino = d?.volatile.get(basename(path))
    return ino === undefined ? undefined : this.inodes.get(ino)
  }

  private async op(op: FsOp): Promise<void> {
    this.opCount++
    await this.onOp?.(op)
  }

  private usedBytes(): number {
    let n = 0
    for (const i of this.inodes.values()) n += i.size
    return n
  }

  /** A durable file with this content (already synced, its name durable). */
  seedFile(path: string, content: Uint8Array): void {
    const dir = dirname(path)
    if (!this.dirs.has(dir)) this.mkdirSync(dir)
    const ino = this.nextIno++
    const data = Buffer.from(content)
    this.inodes.set(ino, {ino, data: Buffer.from(data), size: data.length, durable: Buffer.from(data), durableSize: data.length, mtime: this.clock++})
    this.dir(dir).volatile.set(basename(path), ino)
    this.dir(dir).durable.set(basename(path), ino)
  }

  contentOf(path: string): Buffer {
    const i = this.lookup(path)
    if (!i) throw errno('ENOENT', path)
    return Buffer.from(i.data.subarray(0, i.size))
  }

  pendingCount(): number {
    return this.pending.length
  }

  private mkdirSync(dir: string): void {
    if (this.dirs.has(dir)) return
    if (dir !== dirname(dir)) this.mkdirSync(dirname(dir))
    this.dirs.set(dir, {volatile: new Map(), durable: new Map()})
  }

  async mkdirp(dir: string): Promise<void> {
    this.mkdirSync(dir)
  }

  async readdir(dir: string): Promise<string[]> {
    const names = [...this.dir(dir).volatile.keys()]
    for (const d of this.dirs.keys()) if (dirname(d) === dir && d !== dir) names.push(basename(d))
    return names.sort()
  }

  async exists(path: string): Promise<boolean> {
    return this.dirs.has(path) || this.lookup(path) !== undefined
  }

  async stat(path: string): Promise<FileStat> {
    if (this.dirs.has(path)) return {dev: 1, ino: 0, size: 0, mtimeMs: 0, ctimeMs: 0, isFile: false, isBlockDevice: false, rdev: 0}
    const i = this.lookup(path)
    if (!i) throw errno('ENOENT', path)
    return {dev: 1, ino: i.ino, size: i.size, mtimeMs: i.mtime, ctimeMs: i.mtime, isFile: true, isBlockDevice: false, rdev: 0}
  }

  async readFile(path: string): Promise<Buffer> {
    return this.contentOf(path)
  }

  async realpath(path: string): Promise<string> {
    if (!(await this.exists(path))) throw errno('ENOENT', path)
    return path
  }

  private setName(dir: string, name: string, ino: number | undefined): void {
    const d = this.dir(dir)
    if (ino === undefined) d.volatile.delete(name)
    else d.volatile.set(name, ino)
    this.pending.push({kind: 'name', dir, name, ino})
  }

  async open(path: string, o: OpenOptions = {}): Promise<DurableFile> {
    let node = this.lookup(path)
    if (node && o.create === 'new') throw errno('EEXIST', path)
    if (!node) {
      if (!o.create) throw errno('ENOENT', path)
      if (!this.dirs.has(dirname(path))) throw errno('ENOENT', dirname(path))
      await this.op({kind: 'create', path})
      const ino = this.nextIno++
      node = {ino, data: Buffer.alloc(0), size: 0, durable: Buffer.alloc(0), durableSize: 0, mtime: this.clock++}
      this.inodes.set(ino, node)
      this.setName(dirname(path), basename(path), ino)
    }
    return new MemoryFile(this, path, node, Boolean(o.write))
  }

  /** @internal used by MemoryFile */
  async fileWrite(path: string, node: Inode, buf: Uint8Array, position: number): Promise<void> {
    await this.op({kind: 'write', path, offset: position, length: buf.byteLength})
    if (this.opts.capacity !== undefined && position + buf.byteLength > node.size && this.usedBytes() + (position + buf.byteLength - node.size) > this.opts.capacity) throw errno('ENOSPC', path)
    const data = Buffer.from(buf)
    applyWrite(node, position, data)
    node.mtime = this.clock++
    this.pending.push({kind: 'write', ino: node.ino, offset: position, data})
  }

  /** @internal */
  async fileTruncate(path: string, node: Inode, size: number): Promise<void> {
    await this.op({kind: 'truncate', path, length: size})
    applyTruncate(node, size)
    node.mtime = this.clock++
    this.pending.push({kind: 'truncate', ino: node.ino, size})
  }

  /** @internal datasync: this file's pending writes and truncates become durable. */
  async fileSync(path: string, node: Inode): Promise<void> {
    await this.op({kind: 'datasync', path})
    const keep: Pending[] = []
    for (const p of this.pending) {
      if (p.kind !== 'name' && p.ino === node.ino) {
        const t = {data: node.durable, size: node.durableSize}
        if (p.kind === 'write') applyWrite(t, p.offset, p.data)
        else applyTruncate(t, p.size)
        node.durable = t.data
        node.durableSize = t.size
      } else keep.push(p)
    }
    this.pending = keep
  }

  async rename(from: string, to: string): Promise<void> {
    const node = this.lookup(from)
    if (!node) throw errno('ENOENT', from)
    await this.op({kind: 'rename', path: from})
    if (dirname(from) === dirname(to)) {
      // One atomic step in one directory: both names change together at fsyncDir.
      const d = this.dir(dirname(from))
      d.volatile.delete(basename(from))
      d.volatile.set(basename(to), node.ino)
      this.pending.push({kind: 'name', dir: dirname(to), name: `\u0000rename\u0000${basename(from)}\u0000${basename(to)}`, ino: node.ino})
    } else {
      this.setName(dirname(to), basename(to), node.ino)
      this.setName(dirname(from), basename(from), undefined)
    }
  }

  async fsyncDir(dir: string): Promise<void> {
    await this.op({kind: 'fsyncDir', path: dir})
    const keep: Pending[] = []
    for (const p of this.pending) {
      if (p.kind === 'name' && p.dir === dir) MemoryFs.applyName(this.dir(dir).durable, p)
      else keep.push(p)
    }
    this.pending = keep
  }

  private static applyName(table: Map<string, number>, p: Extract<Pending, {kind: 'name'}>): void {
    if (p.name.startsWith('\u0000rename\u0000')) {
      const [, , from, to] = p.name.split('\u0000')
      table.delete(from)
      table.set(to, p.ino!)
    } else if (p.ino === undefined) table.delete(p.name)
    else table.set(p.name, p.ino)
  }

  async unlink(path: string): Promise<void> {
    if (!this.lookup(path)) return
    await this.op({kind: 'unlink', path})
    this.setName(dirname(path), basename(path), undefined)
  }

  /**
   * A new MemoryFs holding what survives power loss now: the durable state plus the chosen
   * pending operations (in order); a chosen torn write lands only its first `sectors` sectors.
   */
  crash(choice: CrashChoice = {kind: 'durable'}): MemoryFs {
    const n = this.pending.length
    const lands: boolean[] = new Array(n).fill(false)
    if (choice.kind === 'all') lands.fill(true)
    else if (choice.kind === 'prefix') for (let i = 0; i < Math.min(choice.count, n); i++) lands[i] = true
    else if (choice.kind === 'all-but-one') {
      lands.fill(true)
      if (choice.index < n) lands[choice.index] = false
    } else if (choice.kind === 'subset') {
      const r = mulberry32(choice.seed)
      for (let i = 0; i < n; i++) lands[i] = r() < 0.5
    }
    const out = new MemoryFs(this.opts)
    out.nextIno = this.nextIno
    out.clock = this.clock
    const files = new Map<number, {data: Buffer; size: number}>()
    for (const i of this.inodes.values()) files.set(i.ino, {data: Buffer.from(i.durable.subarray(0, Math.max(i.durableSize, 0))), size: i.durableSize})
    const tables = new Map<string, Map<string, number>>()
    for (const [d, t] of this.dirs) tables.set(d, new Map(t.durable))
    const sector = this.opts.sectorSize ?? 512
    this.pending.forEach((p, i) => {
      if (!lands[i] && choice.torn?.index !== i) return
      if (p.kind === 'name') MemoryFs.applyName(tables.get(p.dir)!, p)
      else if (p.kind === 'truncate') applyTruncate(files.get(p.ino)!, p.size)
      else {
        let data = p.data
        if (choice.torn?.index === i) data = data.subarray(0, Math.min(data.length, choice.torn.sectors * sector))
        applyWrite(files.get(p.ino)!, p.offset, data)
      }
    })
    for (const [ino, f] of files) {
      const d = Buffer.from(f.data.subarray(0, f.size))
      out.inodes.set(ino, {ino, data: Buffer.from(d), size: f.size, durable: d, durableSize: f.size, mtime: this.inodes.get(ino)!.mtime})
    }
    for (const [d, t] of tables) out.dirs.set(d, {volatile: new Map(t), durable: new Map(t)})
    return out
  }

  /** Pending writes (index in pending order, length) for choosing torn variants. */
  pendingWrites(): Array<{index: number; length: number}> {
    const out: Array<{index: number; length: number}> = []
    this.pending.forEach((p, index) => {
      if (p.kind === 'write') out.push({index, length: p.data.length})
    })
    return out
  }
}

class MemoryFile implements DurableFile {
  private closed = false

  constructor(
    private readonly fs: MemoryFs,
    readonly path: string,
    private readonly node: {ino: number; data: Buffer; size: number; durable: Buffer; durableSize: number; mtime: number},
    private readonly writable: boolean,
  ) {}

  private live(): void {
    if (this.closed) throw errno('EBADF', this.path)
  }

  async read(buf: Uint8Array, position: number, length = buf.byteLength): Promise<number> {
    this.live()
    const n = Math.max(0, Math.min(length, this.node.size - position))
    if (n > 0) this.node.data.copy(buf, 0, position, position + n)
    return n
  }

  async write(buf: Uint8Array, position: number): Promise<void> {
    this.live()
    if (!this.writable) throw errno('EBADF', this.path)
    await this.fs.fileWrite(this.path, this.node, buf, position)
  }

  async datasync(): Promise<void> {
    this.live()
    await this.fs.fileSync(this.path, this.node)
  }

  async size(): Promise<number> {
    return this.node.size
  }

  async truncate(length: number): Promise<void> {
    this.live()
    await this.fs.fileTruncate(this.path, this.node, length)
  }

  async close(): Promise<void> {
    this.closed = true
  }
}

/**
 * Crash states of fs as it is now: durable, all, prefixes, all-but-one, random subsets and
 * torn writes. At most `max` states (prefixes and all-but-one are sampled evenly beyond it).
 */
export function* enumerateCrashStates(fs: MemoryFs, o: {subsets: number; seed: number; torn: boolean; max?: number}): Generator<{choice: CrashChoice; label: string}> {
  const n = fs.pendingCount()
  const max = o.max ?? 200
  yield {choice: {kind: 'durable'}, label: 'durable'}
  if (n === 0) return
  yield {choice: {kind: 'all'}, label: 'all'}
  const budget = Math.max(2, Math.floor((max - o.subsets) / 3))
  const step = Math.max(1, Math.ceil(n / budget))
  for (let c = 1; c < n; c += step) yield {choice: {kind: 'prefix', count: c}, label: `prefix ${c}/${n}`}
  for (let i = 0; i < n; i += step) yield {choice: {kind: 'all-but-one', index: i}, label: `all but #${i}/${n}`}
  for (let s = 0; s < o.subsets; s++) yield {choice: {kind: 'subset', seed: o.seed * 1000 + s}, label: `subset seed ${o.seed * 1000 + s}`}
  if (o.torn) {
    const r = mulberry32(o.seed)
    const writes = fs.pendingWrites().filter((w) => w.length > 512)
    for (const w of writes.slice(0, budget)) {
      const sectors = 1 + Math.floor(r() * (Math.ceil(w.length / 512) - 1))
      yield {choice: {kind: 'prefix', count: w.index, torn: {index: w.index, sectors}}, label: `torn #${w.index} at ${sectors * 512}`}
    }
  }
}
