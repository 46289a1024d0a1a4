/*
 * Design notes (after nbdkit's cow filter): what a bit means, and when.
 *
 * A PersistentMap is one map file plus two bitmaps in memory:
 *   bits     the truth the engines act on. Delta map D[k]: set ⇒ extent e may differ between
 *            source and clone k. Protected restore map P: set ⇒ a host wrote e during the
 *            restore; never copy over it.
 *   durable  exactly what the file holds (what survives power loss). Every page written to
 *            the file is rendered from `durable`, never from `bits`.
 *
 * A set bit on disk may be stale (the copy happened, the clear never became durable): that
 * costs a repeated copy, never wrong data. A clear bit on disk must be true. So:
 *   setDurable  (recipe 1, "set ahead") bits and durable set, page written and fdatasynced
 *               before the promise resolves; concurrent callers share one commit (group
 *               commit, as md's write-intent bitmap does).
 *   clear       (recipe 2, "clear behind") bits cleared now; durable cleared only by a
 *               checkpoint whose caller fdatasynced the destination volume first (recipe 5).
 *   setVolatile + stage  (recipe 3, "protect behind") P is set in memory before the host's
 *               data write so no copy can start; stage() after the write completes makes it
 *               eligible; the checkpoint commits it after fdatasyncing the source (INV-2).
 * A checkpoint ticket captures the staged sets and pending clears at beginCheckpoint(); any
 * set after that removes the bit from the ticket's clears, so a clear whose second copy is
 * not yet flushed can never become durable through an older ticket.
 *
 * Crash model: a 512-byte sector is written whole or not at all. A torn 4 KiB page mixes
 * old and new sectors of `durable`, each of which is safe by the rules above, so pages need
 * no checksum. The header (first 4 KiB) carries a CRC32C and is only written whole at create
 * or replace time, through a temp file and rename.
 *
 * All file writes of one map are serialized (one commit at a time). Methods that say they
 * do not wait are synchronous.
 */
import {dirname} from 'node:path'
import {CorruptStateError} from '../errors/errors.js'
import type {DurableFile, DurableFs} from '../io/DurableFs.js'
import {writeFileAtomic} from '../io/atomicWrite.js'
import {crc32c} from './crc32c.js'
import {ExtentBitmap} from './ExtentBitmap.js'

export type MapKind = 'delta' | 'protected'

export interface MapHeader {
  kind: MapKind
  extentSize: number
  volumeSize: number
  extentCount: number
  operationId: string
}

export interface CheckpointTicket {
  readonly sets: ExtentBitmap
  readonly clears: ExtentBitmap
}

export const MAP_MAGIC = 'CLNMAP01'
export const MAP_VERSION = 1
export const PAGE = 4096
const HEADER_CRC_AT = 8 + 4 + 4 + 4 + 4 + 8 + 8 + 64
const KIND_CODE: Record<MapKind, number> = {delta: 1, protected: 2}

export function bitmapBytes(extentCount: number): number {
  return Math.ceil(Math.ceil(extentCount / 8) / PAGE) * PAGE
}

export function encodeHeader(h: MapHeader): Buffer {
  const b = Buffer.alloc(PAGE)
  b.write(MAP_MAGIC, 0, 'ascii')
  b.writeUInt32LE(MAP_VERSION, 8)
  b.writeUInt32LE(KIND_CODE[h.kind], 12)
  b.writeUInt32LE(h.extentSize, 16)
  b.writeUInt32LE(0, 20)
  b.writeBigUInt64LE(BigInt(h.volumeSize), 24)
  b.writeBigUInt64LE(BigInt(h.extentCount), 32)
  if (h.operationId.length > 64) throw new RangeError('operation id longer than 64 bytes')
  b.write(h.operationId, 40, 'ascii')
  b.writeUInt32LE(crc32c(b.subarray(0, HEADER_CRC_AT)), HEADER_CRC_AT)
  return b
}

function rebuildFix(path: string): string {
  return `the map cannot be trusted: move ${path} aside and run \`clonectl clone sync GROUP CLONE --full\` (a full compare-and-copy rebuilds it)`
}

export function decodeHeader(b: Buffer, path: string): MapHeader {
  const bad = (what: string): CorruptStateError => new CorruptStateError(`map file ${path}: ${what}`, rebuildFix(path))
  if (b.length < PAGE) throw bad(`truncated header (${b.length} bytes, expected ${PAGE})`)
  if (b.toString('ascii', 0, 8) !== MAP_MAGIC) throw bad('bad magic (not a clonectl map file)')
  const crc = b.readUInt32LE(HEADER_CRC_AT)
  if (crc !== crc32c(b.subarray(0, HEADER_CRC_AT))) throw bad('header checksum mismatch')
  const version = b.readUInt32LE(8)
  if (version !== MAP_VERSION) throw bad(`unknown version ${version} (this clonectl reads ${MAP_VERSION})`)
  const code = b.readUInt32LE(12)
  const kind = (Object.keys(KIND_CODE) as MapKind[]).find((k) => KIND_CODE[k] === code)
  if (!kind) throw bad(`unknown kind ${code}`)
  const opEnd = b.indexOf(0, 40)
  return {
    kind,
    extentSize: b.readUInt32LE(16),
    volumeSize: Number(b.readBigUInt64LE(24)),
    extentCount: Number(b.readBigUInt64LE(32)),
    operationId: b.toString('ascii', 40, opEnd < 0 || opEnd > 104 ? 104 : opEnd),
  }
}

function fileImage(header: MapHeader, bits: ExtentBitmap): Buffer {
  const body = Buffer.alloc(bitmapBytes(header.extentCount))
  bits.copyBytes(body, 0, 0, Math.ceil(header.extentCount / 8))
  return Buffer.concat([encodeHeader(header), body])
}

export class PersistentMap {
  readonly bits: ExtentBitmap
  private readonly durable: ExtentBitmap
  private staged: ExtentBitmap
  private pendingClears: ExtentBitmap
  private readonly tickets = new Set<CheckpointTicket>()
  private chain: Promise<void> = Promise.resolve()
  private batch?: {ranges: Array<[number, number]>; promise: Promise<void>}
  private file?: DurableFile
  /** Page writes + datasyncs done (for tests and benchmarks). */
  commits = 0

  private constructor(
    private readonly fs: DurableFs,
    readonly path: string,
    readonly header: MapHeader,
    bits: ExtentBitmap,
    file: DurableFile,
  ) {
    this.bits = bits
    this.durable = bits.clone()
    this.staged = new ExtentBitmap(bits.count)
    this.pendingClears = new ExtentBitmap(bits.count)
    this.file = file
  }

  /** Create the file whole (temp, datasync, rename, fsync dir) and open it. Waits. */
  static async create(fs: DurableFs, path: string, header: MapHeader, initial?: ExtentBitmap): Promise<PersistentMap> {
    const bits = initial ? initial.clone() : new ExtentBitmap(header.extentCount)
    if (bits.count !== header.extentCount) throw new RangeError(`initial bitmap has ${bits.count} bits, header says ${header.extentCount}`)
    await fs.mkdirp(dirname(path))
    await writeFileAtomic(fs, path, fileImage(header, bits))
    const file = await fs.open(path, {write: true})
    return new PersistentMap(fs, path, header, bits, file)
  }

  /**
   * Open and validate a map file. Missing, truncated, corrupt or mismatched files are a
   * CorruptStateError naming the file: a map is never read as empty. Waits.
   */
  static async open(fs: DurableFs, path: string, expect: {kind: MapKind; extentSize: number; volumeSize: number; operationId?: string}): Promise<PersistentMap> {
    let file: DurableFile
    try {
      file = await fs.open(path, {write: true})
    } catch (error) {
      if ((error as {code?: string}).code === 'ENOENT') throw new CorruptStateError(`map file ${path} is missing`, rebuildFix(path))
      throw error
    }
    try {
      const size = await file.size()
      const head = Buffer.alloc(PAGE)
      const n = await file.read(head, 0, PAGE)
      const h = decodeHeader(head.subarray(0, n), path)
      const bad = (what: string): CorruptStateError => new CorruptStateError(`map file ${path}: ${what}`, rebuildFix(path))
      if (h.kind !== expect.kind) throw bad(`is a ${h.kind} map, expected a ${expect.kind} map`)
      if (h.extentSize !== expect.extentSize) throw bad(`extent size ${h.extentSize} does not match the group's ${expect.extentSize}`)
      if (h.volumeSize !== expect.volumeSize) throw bad(`volume size ${h.volumeSize} does not match the group's ${expect.volumeSize}`)
      if (h.extentCount !== Math.ceil(expect.volumeSize / expect.extentSize)) throw bad(`extent count ${h.extentCount} does not match ${Math.ceil(expect.volumeSize / expect.extentSize)}`)
      if (expect.operationId !== undefined && h.operationId !== expect.operationId)
        throw bad(`belongs to operation ${h.operationId || '(none)'}, not ${expect.operationId}`)
      const need = PAGE + bitmapBytes(h.extentCount)
      if (size < need) throw bad(`truncated (${size} bytes, expected ${need})`)
      const body = Buffer.alloc(Math.ceil(h.extentCount / 8))
      await file.read(body, PAGE, body.length)
      return new PersistentMap(fs, path, h, ExtentBitmap.fromBytes(h.extentCount, body), file)
    } catch (error) {
      await file.close()
      throw error
    }
  }

  get(e: number): boolean {
    return this.bits.get(e)
  }

  /** True when memory holds changes not yet on disk (staged sets or pending clears). */
  hasPendingWork(): boolean {
    return !this.staged.isEmpty() || !this.pendingClears.isEmpty()
  }

  private noteSet(start: number, end: number): void {
    this.pendingClears.clearRange(start, end)
    for (const t of this.tickets) t.clears.clearRange(start, end)
  }

  /** Run fn alone on the file (one commit at a time). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn)
    this.chain = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }

  private async writePages(pages: Iterable<number>): Promise<void> {
    const f = this.file
    if (!f) throw new Error(`map file ${this.path} is closed`)
    const page = Buffer.alloc(PAGE)
    const limit = Math.ceil(this.bits.count / 8)
    let wrote = false
    for (const p of [...pages].sort((a, b) => a - b)) {
      const from = p * PAGE
      page.fill(0)
      this.durable.copyBytes(page, 0, from, Math.min(PAGE, limit - from))
      // eslint-disable-next-line no-await-in-loop
      await f.write(page, PAGE + from)
      wrote = true
    }
    if (wrote) {
      await f.datasync()
      this.commits++
    }
  }

  /**
   * Set ahead (recipe 1): set [start, end) in memory at once and resolve when it is durable.
   * Concurrent calls join one commit. Resolves at once when the bits are already durable.
   */
  setDurable(start: number, end: number): Promise<void> {
    if (start >= end) return Promise.resolve()
    this.bits.setRange(start, end)
    this.noteSet(start, end)
    if (this.durable.allSet(start, end)) return Promise.resolve()
    if (this.batch) {
      this.batch.ranges.push([start, end])
      return this.batch.promise
    }
    const ranges: Array<[number, number]> = [[start, end]]
    const promise = this.serial(async () => {
      // From here on, new callers start the next batch.
      if (this.batch?.ranges === ranges) this.batch = undefined
      const pages = new Set<number>()
      for (const [s, e] of ranges) {
        this.durable.setRange(s, e)
        for (let p = Math.floor(s / (PAGE * 8)); p <= Math.floor((e - 1) / (PAGE * 8)); p++) pages.add(p)
      }
      await this.writePages(pages)
    })
    this.batch = {ranges, promise}
    return promise
  }

  /** Set in memory only, not yet eligible for disk (P before the host's data write). Does not wait. */
  setVolatile(start: number, end: number): void {
    if (start >= end) return
    this.bits.setRange(start, end)
    this.noteSet(start, end)
  }

  /** Bits in [start, end) that are set become eligible for the next checkpoint. Does not wait. */
  stage(start: number, end: number): void {
    if (start >= end) return
    this.staged.setRange(start, end)
  }

  /** Clear in memory; durable only through a checkpoint (recipe 2). Does not wait. */
  clear(start: number, end: number): void {
    if (start >= end) return
    this.bits.clearRange(start, end)
    this.pendingClears.setRange(start, end)
  }

  /**
   * Take what may become durable now. Then the caller fdatasyncs the volumes the cleared
   * extents were copied to (and the source for staged P bits), then commitCheckpoint().
   * Does not wait.
   */
  beginCheckpoint(): CheckpointTicket {
    const t: CheckpointTicket = {sets: this.staged, clears: this.pendingClears}
    this.staged = new ExtentBitmap(this.bits.count)
    this.pendingClears = new ExtentBitmap(this.bits.count)
    this.tickets.add(t)
    return t
  }

  /**
   * Apply a ticket to disk: staged bits still set become durably set; cleared bits still
   * clear (and not set again since the ticket) become durably clear. Writes only the pages
   * that changed, then datasync. Waits; serialized with every other commit of this map.
   */
  commitCheckpoint(t: CheckpointTicket): Promise<void> {
    return this.serial(async () => {
      this.tickets.delete(t)
      const pages = new Set<number>()
      const mem = this.bits.words
      const dur = this.durable.words
      const sets = t.sets.words
      const clears = t.clears.words
      for (let w = 0; w < dur.length; w++) {
        if ((sets[w] | clears[w]) === 0) continue
        const next = ((dur[w] | (sets[w] & mem[w])) & ~(clears[w] & ~mem[w])) >>> 0
        if (next !== dur[w]) {
          dur[w] = next
          pages.add(Math.floor((w * 4) / PAGE))
        }
      }
      await this.writePages(pages)
    })
  }

  /** Make memory and disk equal `bits`, durably (D[c] := P at the end of a restore). Waits. */
  replaceAll(bits: ExtentBitmap): Promise<void> {
    return this.serial(async () => {
      this.bits.copyFrom(bits)
      this.durable.copyFrom(bits)
      this.staged.clearAll()
      this.pendingClears.clearAll()
      for (const t of this.tickets) {
        t.sets.clearAll()
        t.clears.clearAll()
      }
      const pages = new Set<number>()
      for (let p = 0; p < bitmapBytes(this.bits.count) / PAGE; p++) pages.add(p)
      await this.writePages(pages)
    })
  }

  /** Waits for commits in flight, then closes the file. */
  async close(): Promise<void> {
    await this.chain
    const f = this.file
    this.file = undefined
    await f?.close()
  }
}
