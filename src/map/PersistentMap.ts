/*
 * Design notes (after nbdkit's cow filter): what a bit means, where, and when.
 * ===========================================================================
 *
 * A PersistentMap is one map file (DESIGN §3) plus bitmaps in memory:
 *
 *   bits      the truth the engines act on, changed at once by every call below.
 *   durable   the image of the file: what it holds once the commit in flight (if any) is
 *             datasynced. Every page ever written is rendered from `durable`, never from
 *             `bits` (which may hold clears whose copied data is not yet durable).
 *   unsynced  bits set in `durable` by the commit in flight, whose datasync has not yet
 *             returned: set in the image, not yet on disk.
 *   staged    bits set in `bits` whose data write completed: eligible for the next checkpoint.
 *   cleared   bits cleared in `bits` since the last checkpoint was begun.
 *
 * Delta map D[k] (kind 'delta'): set ⇒ extent e may differ between the source and clone k.
 *
 *   bits durable
 *    1     1    e may differ, and a crash remembers it.
 *    1     0    only while a setDurable is committing (its caller has not issued the write
 *               that makes e differ yet: recipe 1), or a set not yet staged/checkpointed.
 *    0     1    e was copied (clear behind, recipe 2); until a checkpoint commits the clear,
 *               a crash costs one repeated copy, never wrong data.
 *    0     0    e is equal on both sides, and a crash keeps it so.
 *
 * Protected restore map P (kind 'protected'): set ⇒ a host wrote e during this restore, so
 * nothing may copy e from the clone any more.
 *
 *    1     0    a host write to e is in progress, or completed but not yet checkpointed:
 *               copies of e are blocked at once (recipe 3, "set in memory before the data is
 *               written"). A crash recopies e from the clone: an unflushed write may be lost,
 *               as NBD allows, never misplaced.
 *    1     1    every byte of source[e] is the clone's or a host's (INV-2): durable only
 *               after a checkpoint that fdatasynced the source after the data write.
 *    0     1    never (P bits are only dropped whole, by replaceAll or by deleting P).
 *
 * Ordering rules kept here (DESIGN §4); the caller keeps the rest:
 *   recipe 1  setDurable resolves only after its bits are datasynced (or were already on
 *             disk). Concurrent callers share one commit: group commit, as md's write-intent
 *             bitmap does. A call whose bits are set in the image but still unsynced waits
 *             for that commit: a second write to e must not overtake the first's set ahead.
 *   recipe 2  clear() is memory only; the bit becomes durably clear only through a
 *             checkpoint ticket, and only if it is still clear and was not set again (by
 *             setDurable or setVolatile) after the ticket was taken: a set removes the bit
 *             from every open ticket, so a clear whose second copy is not yet flushed never
 *             becomes durable through an older ticket.
 *   recipe 3  setVolatile (P before the host's data write) is never eligible for disk;
 *             stage() after the write completes makes exactly the bits then set eligible;
 *             a set after that (a bit that was clear again) is not eligible until staged
 *             again. The checkpoint commits P before the delta maps (Checkpointer).
 *   recipe 5  the caller takes a ticket (beginCheckpoint), fdatasyncs the volumes that the
 *             cleared extents were copied to (and the source, for staged P bits), and only
 *             then commits the ticket (commitCheckpoint).
 *
 * A ticket that is never committed (its checkpoint failed part-way) loses nothing: every
 * ticket includes the work of all older tickets not yet committed, and committing it retires
 * them. Committing a retired ticket does nothing.
 *
 * Crash model: a 512-byte sector is written whole or not at all. The header page carries a
 * CRC32C and is written only whole, through a temp file and a rename (create, and the
 * conversion of a version-1 file).
 *
 * Every bitmap page is verifiable too (format version 2; DESIGN §3): damage from rot, a stray
 * write or a hand edit must never be trusted, and a cleared D bit would silently skip a copy.
 * Each logical page p is stored twice, in slots 2p and 2p+1 of 4096 bytes (double pages, as
 * md's bitmap and dm's persistent-data keep shadows). Every 512-byte sector of a slot is
 * self-describing: [seq u64][CRC32C u32][500 payload bytes], the CRC over (page, slot,
 * sector index, seq, payload). So a sector is "good" only if it was written whole for this
 * page, this slot, this position, with this seq: a sector misdirected from the other slot of
 * the page fails too (it must not make the current slot pass for a torn one). A slot is
 *   valid    all 8 sectors good with one seq: a complete image of commit `seq`;
 *   torn     all 8 good, seqs differ: only an interrupted write makes that (sectors are
 *            atomic; a bit flip, a stray or shifted write, a zeroed block fail a sector CRC);
 *   damaged  some sector fails its CRC. It claims the highest seq among its good sectors
 *            (none good: it may claim anything).
 * A commit writes each page into the slot that does NOT hold its current image, with a seq
 * higher than any seen for that page (a seq is never reused: two interrupted writes at one
 * seq could otherwise mix into a slot that looks valid), then one datasync as before. So the
 * slot holding the last durable image of a page is never written until a newer image of that
 * page is durable in the other slot. On open the page's image is its valid slot with the
 * highest seq, unless the other slot is damaged and claims a seq at least as high (or both
 * are valid with one seq and differ): then the page's current image is unknown.
 *   - A torn slot is ignored, and falling back to the older valid slot is safe: the commit
 *     that tore never completed its datasync, so no caller relied on it (recipe 1's
 *     setDurable had not resolved, a checkpoint's clears were not yet durable, which only
 *     costs a recopy). Each page lands as the before or the after image, never a mix.
 *   - A damaged slot claiming a lower seq is stale rot: ignored, overwritten by the next
 *     commit of that page.
 *   - Unknown, D: every extent of the page is taken as dirty (an extra copy, never a missed
 *     one); `damagedPages` lists the pages for the caller's warning and `status`. Unless
 *     opened read-only, the page is rewritten at once, into both slots (seq m+1 then m+2),
 *     durably, so the repair sticks even if neither slot had a good sector.
 *   - Unknown, P: no value is safe (a clear bit lets a host write be overwritten, a set bit
 *     keeps pre-restore data; the older slot may lack bits of flushed host writes), so open
 *     throws a CorruptStateError naming the file and the page, unless the caller asks for
 *     `damaged: 'clear'` (restore --force: it sets D[c] for those extents durably first,
 *     then calls repairDamagedPages(), so only the host writes of those extents are lost).
 * Why a CRC per sector rather than one per slot with a bare seq per sector: with a bare seq,
 * a single flipped bit can turn the current slot's seq n+1 into n-1 in one sector, and the
 * slot would pass for torn, so open would fall back to image n and silently lose commit n+1.
 * A torn slot is recognised instead by every sector being individually good.
 * Limit: a stale slot already rotten, then a power loss tearing the next write into it,
 * leaves that page unknown (the rotten sector may be what landed): for D an extra copy, for P
 * the named stop. Rot in both slots at once is the same.
 * A version-1 file (one copy per page, no page checksums; its pages were trusted then) is
 * read as before and converted whole to version 2 with writeFileAtomic, like create(): a
 * crash leaves the v1 or the v2 file, both meaning the same bits.
 *
 * Concurrency: all writes to the file are serialized (one commit at a time, a promise chain).
 * After a failed page write or datasync the map is failed: the file may not match `durable`,
 * so every later durable request rejects instead of pretending (as dm-clone goes read-only).
 */
import {dirname} from 'node:path'
import {CorruptStateError, errnoOf, VolumeIoError} from '../errors/errors.js'
import type {DurableFile, DurableFs} from '../io/DurableFs.js'
import {writeFileAtomic} from '../io/atomicWrite.js'
import {crc32c} from './crc32c.js'
import {ExtentBitmap, MAX_EXTENTS} from './ExtentBitmap.js'

export type MapKind = 'delta' | 'protected'

export interface MapHeader {
  kind: MapKind
  extentSize: number
  volumeSize: number
  extentCount: number
  operationId: string
}

/** What open() checks the file's header against. */
export interface MapExpectation {
  kind: MapKind
  extentSize: number
  volumeSize: number
  /** When given, the header's operation id must equal it (P belongs to one restore). */
  operationId?: string
}

export const MAP_MAGIC = 'CLNMAP01'
/** The version this clonectl writes. Version 1 (no page checksums) is read and converted. */
export const MAP_VERSION = 2
/** Header page size, and the size of each of a bitmap page's two slots. */
export const PAGE = 4096
/** Sectors of a slot: the crash model's atomic unit. */
export const SECTOR = 512
/** Per sector: seq (u64) and CRC32C (u32) before the payload. */
const SECTOR_HEAD = 12
const SECTOR_PAYLOAD = SECTOR - SECTOR_HEAD // 500
const SECTORS_PER_SLOT = PAGE / SECTOR // 8
/** Bitmap bytes one page holds (a whole number of 32-bit words: 1000). */
export const PAGE_PAYLOAD = SECTORS_PER_SLOT * SECTOR_PAYLOAD // 4000
/** Extents covered by one bitmap page: page p covers [p * EXTENTS_PER_PAGE, (p + 1) * EXTENTS_PER_PAGE). */
export const EXTENTS_PER_PAGE = PAGE_PAYLOAD * 8
/** Longest operation id (ASCII bytes, NUL-padded in the header). */
export const OPERATION_ID_BYTES = 64

// Header layout, little-endian.
const AT_VERSION = 8
const AT_KIND = 12
const AT_EXTENT_SIZE = 16
const AT_RESERVED = 20
const AT_VOLUME_SIZE = 24
const AT_EXTENT_COUNT = 32
const AT_OPERATION_ID = 40
const AT_CRC = AT_OPERATION_ID + OPERATION_ID_BYTES // 104

const KIND_CODE: Record<MapKind, number> = {delta: 1, protected: 2}
const KIND_NAME: Record<MapKind, string> = {delta: 'delta map', protected: 'protected restore map (P)'}

/** Logical bitmap pages of a map of `extentCount` extents. */
export function bitmapPages(extentCount: number): number {
  return Math.ceil(Math.ceil(extentCount / 8) / PAGE_PAYLOAD)
}

/** Bytes after the header in a version-2 file for `extentCount` extents: two slots a page. */
export function bitmapBytes(extentCount: number): number {
  return bitmapPages(extentCount) * 2 * PAGE
}

/** Size of a whole (version-2) map file. */
export function mapFileSize(extentCount: number): number {
  return PAGE + bitmapBytes(extentCount)
}

/** Size of a version-1 file: the bitmap once, padded to whole 4096-byte pages. */
function v1FileSize(extentCount: number): number {
  return PAGE + Math.ceil(Math.ceil(extentCount / 8) / PAGE) * PAGE
}

/** File offset of slot `slot` (0 or 1) of page `page`. */
export function slotOffset(page: number, slot: number): number {
  return PAGE + (2 * page + slot) * PAGE
}

/**
 * Render page `page` of `bits` as a slot image with sequence number `seq` into out[at..at+PAGE):
 * every sector [seq u64][CRC32C u32][500 payload bytes].
 */
export function encodeSlot(bits: ExtentBitmap, page: number, slot: number, seq: number, out: Uint8Array, at = 0): void {
  const buf = Buffer.from(out.buffer, out.byteOffset, out.byteLength)
  for (let k = 0; k < SECTORS_PER_SLOT; k++) {
    const o = at + k * SECTOR
    bits.copyBytes(buf, o + SECTOR_HEAD, page * PAGE_PAYLOAD + k * SECTOR_PAYLOAD, SECTOR_PAYLOAD)
    writeSeq(buf, seq, o)
    buf.writeUInt32LE(sectorCrc(page, slot, k, seq, buf.subarray(o + SECTOR_HEAD, o + SECTOR)), o + 8)
  }
}

/** seq (a safe integer, at least 0) as a u64, little-endian, at buf[at..at+8): without a BigInt per sector. */
function writeSeq(buf: Buffer, seq: number, at: number): void {
  buf.writeUInt32LE(seq % 0x1_0000_0000, at)
  buf.writeUInt32LE(Math.floor(seq / 0x1_0000_0000), at + 4)
}

/** The 16 identity bytes a sector's CRC starts with; one buffer, filled and hashed synchronously per call. */
const sectorId = Buffer.alloc(16)

/** CRC32C of (page u32, slot u16, sector u16, seq u64, payload), all little-endian. */
function sectorCrc(page: number, slot: number, sector: number, seq: number, payload: Uint8Array): number {
  sectorId.writeUInt32LE(page, 0)
  sectorId.writeUInt16LE(slot, 4)
  sectorId.writeUInt16LE(sector, 6)
  writeSeq(sectorId, seq, 8)
  return crc32c(payload, crc32c(sectorId))
}

/** What one slot holds (see the design notes). */
export interface SlotState {
  state: 'valid' | 'torn' | 'damaged'
  /** valid: its seq; torn or damaged: the highest seq of its good sectors (-1: none good). */
  seq: number
  /** Highest seq of any good sector (-1: none): a new write must use a higher one. */
  maxSeen: number
}

/** Classify the slot image in b[at..at+PAGE) of slot `slot` of page `page`. */
export function classifySlot(b: Uint8Array, page: number, slot: number, at = 0): SlotState {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  let good = 0
  let first = -1
  let same = true
  let max = -1
  for (let k = 0; k < SECTORS_PER_SLOT; k++) {
    const o = at + k * SECTOR
    // The u64 seq as two u32 halves, not a BigInt (status classifies every sector it reads).
    const hi = buf.readUInt32LE(o + 4)
    if (hi > 0x1f_ffff) continue // beyond 2^53 - 1, where no writer gets: a damaged sector
    const seq = hi * 0x1_0000_0000 + buf.readUInt32LE(o)
    if (buf.readUInt32LE(o + 8) !== sectorCrc(page, slot, k, seq, buf.subarray(o + SECTOR_HEAD, o + SECTOR))) continue
    good++
    if (first < 0) first = seq
    else if (seq !== first) same = false
    if (seq > max) max = seq
  }
  if (good < SECTORS_PER_SLOT) return {state: 'damaged', seq: max, maxSeen: max}
  return same ? {state: 'valid', seq: first, maxSeen: max} : {state: 'torn', seq: max, maxSeen: max}
}

/** Copy the payload of the slot at b[at..] into out[outAt..outAt+length) (bitmap bytes in order). */
function slotPayload(b: Uint8Array, at: number, out: Uint8Array, outAt: number, length: number): void {
  for (let k = 0, done = 0; k < SECTORS_PER_SLOT && done < length; k++) {
    const n = Math.min(SECTOR_PAYLOAD, length - done)
    const o = at + k * SECTOR + SECTOR_HEAD
    out.set(b.subarray(o, o + n), outAt + done)
    done += n
  }
}

/**
 * Which slot of a page to trust, from the states of its two slots: the slot index, or -1 when
 * the page's current image is unknown (design notes). `samePayload` is asked only when both
 * are valid with one seq.
 */
export function chooseSlot(a: SlotState, b: SlotState, samePayload: () => boolean): number {
  const pick = (i: number, mine: SlotState, other: SlotState): number => {
    if (other.state === 'torn') return i
    if (other.state === 'damaged') return other.seq >= 0 && other.seq < mine.seq ? i : -1
    if (other.seq < mine.seq) return i
    return other.seq === mine.seq && samePayload() ? i : -1
  }
  if (a.state === 'valid' && (b.state !== 'valid' || a.seq >= b.seq)) return pick(0, a, b)
  if (b.state === 'valid') return pick(1, b, a)
  return -1
}

/** The header page of `h`. Throws RangeError for a header no map file may carry. */
export function encodeHeader(h: MapHeader): Buffer {
  checkHeader(h)
  const b = Buffer.alloc(PAGE)
  b.write(MAP_MAGIC, 0, 'ascii')
  b.writeUInt32LE(MAP_VERSION, AT_VERSION)
  b.writeUInt32LE(KIND_CODE[h.kind], AT_KIND)
  b.writeUInt32LE(h.extentSize, AT_EXTENT_SIZE)
  b.writeUInt32LE(0, AT_RESERVED)
  b.writeBigUInt64LE(BigInt(h.volumeSize), AT_VOLUME_SIZE)
  b.writeBigUInt64LE(BigInt(h.extentCount), AT_EXTENT_COUNT)
  b.write(h.operationId, AT_OPERATION_ID, 'ascii')
  b.writeUInt32LE(crc32c(b.subarray(0, AT_CRC)), AT_CRC)
  return b
}

function checkHeader(h: MapHeader): void {
  if (!(h.kind in KIND_CODE)) throw new RangeError(`map kind ${String(h.kind)} is not delta or protected`)
  if (!Number.isInteger(h.extentSize) || h.extentSize <= 0 || h.extentSize > 0xffffffff)
    throw new RangeError(`extent size ${h.extentSize} is out of range (1..4294967295)`)
  if (!Number.isSafeInteger(h.volumeSize) || h.volumeSize < 0) throw new RangeError(`volume size ${h.volumeSize} is not a whole number of bytes`)
  const count = Math.ceil(h.volumeSize / h.extentSize)
  if (h.extentCount !== count)
    throw new RangeError(`extent count ${h.extentCount} does not match the ${count} extents of a ${h.volumeSize}-byte volume at extent size ${h.extentSize}`)
  if (count > MAX_EXTENTS) throw new RangeError(`${count} extents is more than a map can track (${MAX_EXTENTS}); use a larger extent size`)
  if (!/^[\x20-\x7e]*$/.test(h.operationId) || h.operationId.length > OPERATION_ID_BYTES)
    throw new RangeError(`operation id ${JSON.stringify(h.operationId)} is not printable ASCII of at most ${OPERATION_ID_BYTES} bytes`)
}

/** The one-line fix for an untrustworthy map file of this kind. */
function fixFor(kind: MapKind): string {
  return kind === 'protected'
    ? 'do not delete it: without P, host writes made during the restore cannot be told apart; `clonectl restore GROUP --force` resumes, copying from the clone again every extent whose P bit is lost (host writes made to those extents during the restore are overwritten)'
    : 'run `clonectl clone sync GROUP CLONE --full` to rebuild it with a full copy'
}

/**
 * Parse and check a header page read from `path` (CorruptStateError naming the file when it is
 * short, not a map file, of an unknown version, or fails its CRC). `kind` only picks the fix.
 */
export function decodeHeader(b: Uint8Array, path: string, kind: MapKind = 'delta'): MapHeader {
  return decodeHeaderVersion(b, path, kind).header
}

/** decodeHeader, and the file's format version (1 or 2). */
function decodeHeaderVersion(b: Uint8Array, path: string, kind: MapKind): {header: MapHeader; version: number} {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  const bad = (what: string): CorruptStateError => new CorruptStateError(`map file ${path}: ${what}`, fixFor(kind))
  if (buf.length < PAGE) throw bad(`truncated: ${buf.length} bytes, shorter than the ${PAGE}-byte header`)
  if (buf.toString('latin1', 0, 8) !== MAP_MAGIC) throw bad(`bad magic ${JSON.stringify(buf.toString('latin1', 0, 8))}, expected "${MAP_MAGIC}" (not a clonectl map file)`)
  // Version before CRC: a later version may lay its header out differently.
  const version = buf.readUInt32LE(AT_VERSION)
  if (version !== 1 && version !== MAP_VERSION)
    throw bad(`unknown version ${version} (this clonectl reads versions 1 and ${MAP_VERSION}; a newer clonectl wrote it, or the header is damaged)`)
  const stored = buf.readUInt32LE(AT_CRC)
  const actual = crc32c(buf.subarray(0, AT_CRC))
  if (stored !== actual) throw bad(`header checksum mismatch (stored CRC32C 0x${hex(stored)}, computed 0x${hex(actual)}): the header is damaged`)
  const code = buf.readUInt32LE(AT_KIND)
  const found = (Object.keys(KIND_CODE) as MapKind[]).find((k) => KIND_CODE[k] === code)
  if (!found) throw bad(`unknown kind ${code} (1 = delta, 2 = protected)`)
  const volumeSize = buf.readBigUInt64LE(AT_VOLUME_SIZE)
  const extentCount = buf.readBigUInt64LE(AT_EXTENT_COUNT)
  if (volumeSize > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`volume size ${volumeSize} is out of range`)
  if (extentCount > BigInt(MAX_EXTENTS)) throw bad(`extent count ${extentCount} is out of range (at most ${MAX_EXTENTS})`)
  const nul = buf.indexOf(0, AT_OPERATION_ID)
  const opEnd = nul < 0 || nul > AT_CRC ? AT_CRC : nul
  const header: MapHeader = {
    kind: found,
    extentSize: buf.readUInt32LE(AT_EXTENT_SIZE),
    volumeSize: Number(volumeSize),
    extentCount: Number(extentCount),
    operationId: buf.toString('latin1', AT_OPERATION_ID, opEnd),
  }
  return {header, version}
}

function hex(n: number): string {
  return n.toString(16).padStart(8, '0')
}

/** Bitmap page holding extent e. */
function pageOf(e: number): number {
  return Math.floor(e / EXTENTS_PER_PAGE)
}

/** Bitmap page holding word w of an ExtentBitmap (1000 words a page). */
function pageOfWord(w: number): number {
  return Math.floor(w / (PAGE_PAYLOAD / 4))
}

/** Extents [start, end) of page p of a map of `count` extents. */
function pageRange(p: number, count: number): [number, number] {
  return [p * EXTENTS_PER_PAGE, Math.min(count, (p + 1) * EXTENTS_PER_PAGE)]
}

/** First and last extent of page p, for messages. */
function pageExtents(p: number, count: number): [number, number] {
  const [s, e] = pageRange(p, count)
  return [s, e - 1]
}

/** Page state of a freshly written file: slot 0 current at seq 1, slot 1 the same at seq 0. */
function freshPages(count: number): {seqs: number[]; cur: Uint8Array; damaged: number[]} {
  const n = bitmapPages(count)
  return {seqs: new Array<number>(n).fill(1), cur: new Uint8Array(n), damaged: []}
}

/** A whole version-2 file: header, then every page in both slots (seq 1 and 0). */
function encodeImage(header: MapHeader, bits: ExtentBitmap): Buffer {
  const image = Buffer.alloc(mapFileSize(header.extentCount))
  encodeHeader(header).copy(image, 0)
  for (let p = 0; p < bitmapPages(header.extentCount); p++) {
    encodeSlot(bits, p, 0, 1, image, slotOffset(p, 0))
    encodeSlot(bits, p, 1, 0, image, slotOffset(p, 1))
  }
  return image
}

/** Why neither slot of a page can be trusted, for the error message. */
function whyUnknown(a: SlotState, b: SlotState): string {
  const say = (s: SlotState): string =>
    s.state === 'valid' ? `valid at seq ${s.seq}` : s.state === 'torn' ? 'torn' : s.seq < 0 ? 'damaged (no sector passes its CRC32C)' : `damaged (claims seq ${s.seq})`
  return `slot 0 ${say(a)}, slot 1 ${say(b)}`
}

/**
 * Extents [lo, hi) outside which some bitmaps have no bit set (empty while hi <= lo). Widened
 * by every set into them, never narrowed while they hold bits: a bound, not an exact
 * extent. A checkpoint looks at the staged sets and clears only inside it, so one that
 * covers a sync's last second of progress costs that progress, not a pass over the whole map
 * (16M extents at 1 TiB).
 */
interface Span {
  lo: number
  hi: number
}

function emptySpan(): Span {
  return {lo: Number.POSITIVE_INFINITY, hi: 0}
}

/** Widen `s` to cover [start, end). */
function widen(s: Span, start: number, end: number): void {
  if (end <= start) return
  if (start < s.lo) s.lo = start
  if (end > s.hi) s.hi = end
}

/**
 * What a checkpoint may make durable, taken by beginCheckpoint() and applied by
 * commitCheckpoint(). Opaque to callers; a ticket belongs to the map that issued it.
 */
export class CheckpointTicket {
  /** @internal staged sets (bits set in memory whose data write completed). */
  readonly sets: ExtentBitmap
  /** @internal clears not undone by a later set. */
  readonly clears: ExtentBitmap
  /** @internal no bit of sets or clears is set outside it (bits are only removed after the ticket is taken). */
  readonly span: Readonly<Span>
  /** @internal false once committed, or retired by a newer ticket's commit or a replaceAll. */
  open = true

  /** @internal */
  constructor(
    readonly owner: PersistentMap,
    sets: ExtentBitmap,
    clears: ExtentBitmap,
    span: Span,
  ) {
    this.sets = sets
    this.clears = clears
    this.span = span
  }

  /** Nothing to make durable (committing it writes nothing). */
  get empty(): boolean {
    const {lo, hi} = this.span
    return hi <= lo || (!this.sets.anySet(lo, hi) && !this.clears.anySet(lo, hi))
  }
}

export class PersistentMap {
  /** The bits the engines act on. Read it freely; change it only through the methods below. */
  readonly bits: ExtentBitmap
  private readonly durable: ExtentBitmap
  private readonly unsynced: ExtentBitmap
  private staged: ExtentBitmap
  private cleared: ExtentBitmap
  /** Where staged and cleared may have bits set: stage() and clear() widen it, a ticket takes it. */
  private pending: Span = emptySpan()
  /** Tickets taken and not yet committed or retired, oldest first. */
  private tickets: CheckpointTicket[] = []
  /** Tail of the commit chain: every file write runs after the previous one settled. */
  private chain: Promise<void> = Promise.resolve()
  /** The setDurable batch waiting for its turn; new callers join it until it starts. */
  private batch?: {ranges: Array<[number, number]>; done: Promise<void>}
  /** The page write + datasync in flight (the one that leaves `unsynced` bits). */
  private inflight: Promise<void> = Promise.resolve()
  /** replaceAll calls not yet written: `durable` is about to be replaced, no fast path. */
  private replacing = 0
  private failure?: VolumeIoError
  private file?: DurableFile
  private closing = false
  private datasyncs = 0

  /** Per page: the highest seq seen or written; a new slot write uses a higher one. */
  private readonly seqs: number[]
  /** Per page: the slot (0 or 1) holding its current image. */
  private readonly cur: Uint8Array
  /** Pages whose image was unknown at open: their next write fills both slots. */
  private readonly bothSlots = new Set<number>()
  private readonly readOnly: boolean
  /**
   * Pages found damaged at open (current image unknown), ascending: for D every extent of
   * them was taken as dirty; for P (damaged: 'clear') as not host-written.
   */
  readonly damagedPages: readonly number[]

  private constructor(
    readonly path: string,
    readonly header: Readonly<MapHeader>,
    bits: ExtentBitmap,
    file: DurableFile,
    pages: {seqs: number[]; cur: Uint8Array; damaged: number[]},
    readOnly: boolean,
  ) {
    this.bits = bits
    this.durable = bits.clone()
    this.unsynced = new ExtentBitmap(bits.count)
    this.staged = new ExtentBitmap(bits.count)
    this.cleared = new ExtentBitmap(bits.count)
    this.file = file
    this.seqs = pages.seqs
    this.cur = pages.cur
    this.damagedPages = Object.freeze([...pages.damaged])
    for (const p of pages.damaged) this.bothSlots.add(p)
    this.readOnly = readOnly
  }

  /**
   * Create the map file whole, with the bits of `initial` (default: none set), and open it:
   * written to a temp name, datasynced, renamed into place, directory fsynced. Replaces an
   * existing file at `path`. Waits. Throws RangeError for an impossible header.
   */
  static async create(fs: DurableFs, path: string, header: MapHeader, initial?: ExtentBitmap): Promise<PersistentMap> {
    encodeHeader(header)
    const bits = initial ? initial.clone() : new ExtentBitmap(header.extentCount)
    if (bits.count !== header.extentCount) throw new RangeError(`initial bitmap has ${bits.count} extents, the header says ${header.extentCount}`)
    try {
      await fs.mkdirp(dirname(path))
      await writeFileAtomic(fs, path, encodeImage(header, bits))
    } catch (error) {
      throw ioError(path, 'cannot be created', error)
    }
    const file = await openFile(fs, path, header.kind, true)
    return new PersistentMap(path, Object.freeze({...header}), bits, file, freshPages(header.extentCount), false)
  }

  /**
   * A map held in memory only, with the bits of `initial`: it behaves like an open map, but
   * nothing it commits reaches a disk. For a stand-in (a damaged map taken as all set until
   * a writable open rewrites it with create()). Throws RangeError for an impossible header.
   */
  static inMemory(path: string, header: MapHeader, initial: ExtentBitmap): PersistentMap {
    encodeHeader(header)
    if (initial.count !== header.extentCount) throw new RangeError(`initial bitmap has ${initial.count} extents, the header says ${header.extentCount}`)
    const bits = initial.clone()
    return new PersistentMap(path, Object.freeze({...header}), bits, new HeldImage(path, encodeImage(header, bits)), freshPages(header.extentCount), false)
  }

  /**
   * Open a map file and check it against what the group expects. A missing, truncated or
   * damaged file, or one of another kind, extent size, volume size, extent count or
   * operation, is a CorruptStateError that names the file and the values: a map is never
   * read as empty. Other I/O failures are a VolumeIoError. Waits.
   *
   * A page whose current image is unknown (design notes): for a delta map every extent of it
   * is set, listed in `damagedPages`, and (unless readOnly) rewritten durably before open
   * returns; for P a CorruptStateError naming the page, or with `damaged: 'clear'` its bits
   * read as clear and listed, for the caller to cover and then repairDamagedPages().
   * A version-1 file is converted to version 2 (atomically) unless readOnly.
   * readOnly: nothing is written, now or later (for `status`, which holds no lock).
   */
  static async open(fs: DurableFs, path: string, expect: MapExpectation, opts: {readOnly?: boolean; damaged?: 'clear'} = {}): Promise<PersistentMap> {
    const readOnly = opts.readOnly ?? false
    let file = await openFile(fs, path, expect.kind, !readOnly)
    try {
      const bad = (what: string): CorruptStateError => new CorruptStateError(`map file ${path}: ${what}`, fixFor(expect.kind))
      let size: number
      const head = Buffer.alloc(PAGE)
      let n: number
      try {
        size = await file.size()
        n = await file.read(head, 0, PAGE)
      } catch (error) {
        throw ioError(path, 'cannot be read', error)
      }
      const {header: h, version} = decodeHeaderVersion(head.subarray(0, n), path, expect.kind)
      const need = version === 1 ? v1FileSize(h.extentCount) : mapFileSize(h.extentCount)
      if (size < need) throw bad(`truncated: ${size} bytes, shorter than the ${need} bytes of a map of ${h.extentCount} extents`)
      if (h.kind !== expect.kind) throw bad(`is a ${KIND_NAME[h.kind]}, expected a ${KIND_NAME[expect.kind]}`)
      if (h.extentSize !== expect.extentSize) throw bad(`extent size ${h.extentSize} does not match the group's ${expect.extentSize}`)
      if (h.volumeSize !== expect.volumeSize) throw bad(`volume size ${h.volumeSize} does not match the group's ${expect.volumeSize}`)
      const count = Math.ceil(expect.volumeSize / expect.extentSize)
      if (h.extentCount !== count)
        throw bad(`extent count ${h.extentCount} does not match the ${count} extents of a ${expect.volumeSize}-byte volume at extent size ${expect.extentSize}`)
      if (expect.operationId !== undefined && h.operationId !== expect.operationId)
        throw bad(`belongs to operation ${JSON.stringify(h.operationId)}, not to the group's operation ${JSON.stringify(expect.operationId)}`)
      const body = Buffer.alloc(Math.ceil(h.extentCount / 8))
      if (version === 1) {
        // One trusted copy per page, as version 1 wrote it.
        let got: number
        try {
          got = await file.read(body, PAGE, body.length)
        } catch (error) {
          throw ioError(path, 'cannot be read', error)
        }
        if (got < body.length) throw bad(`truncated while reading: ${got} of ${body.length} bitmap bytes`)
        const bits = ExtentBitmap.fromBytes(h.extentCount, body)
        if (!readOnly) {
          try {
            await writeFileAtomic(fs, path, encodeImage(h, bits))
          } catch (error) {
            throw ioError(path, 'cannot be converted to map format version 2', error)
          }
          await file.close()
          file = await openFile(fs, path, h.kind, true)
        }
        return new PersistentMap(path, Object.freeze(h), bits, file, freshPages(h.extentCount), readOnly)
      }
      const pages = bitmapPages(h.extentCount)
      const seqs = new Array<number>(pages).fill(0)
      const cur = new Uint8Array(pages)
      const damaged: Array<{page: number; why: string}> = []
      // Read a bounded number of pages at a time: a large map's slots are not held whole.
      const chunk = 256
      for (let p0 = 0; p0 < pages; p0 += chunk) {
        const k = Math.min(chunk, pages - p0)
        const buf = Buffer.alloc(k * 2 * PAGE)
        let got: number
        try {
          // Bounded memory, in file order.
          got = await file.read(buf, slotOffset(p0, 0), buf.length)
        } catch (error) {
          throw ioError(path, 'cannot be read', error)
        }
        if (got < buf.length) throw bad(`truncated while reading: ${got} of ${buf.length} bytes of bitmap slots`)
        for (let i = 0; i < k; i++) {
          const p = p0 + i
          const at = 2 * i * PAGE
          const a = classifySlot(buf, p, 0, at)
          const b = classifySlot(buf, p, 1, at + PAGE)
          seqs[p] = Math.max(a.maxSeen, b.maxSeen, 0)
          const slot = chooseSlot(a, b, () => buf.subarray(at, at + PAGE).equals(buf.subarray(at + PAGE, at + 2 * PAGE)))
          if (slot < 0) {
            damaged.push({page: p, why: whyUnknown(a, b)})
            continue
          }
          cur[p] = slot
          slotPayload(buf, at + slot * PAGE, body, p * PAGE_PAYLOAD, Math.min(PAGE_PAYLOAD, body.length - p * PAGE_PAYLOAD))
        }
      }
      const bits = ExtentBitmap.fromBytes(h.extentCount, body)
      if (damaged.length > 0 && h.kind === 'protected' && opts.damaged !== 'clear') {
        const d = damaged[0]
        throw bad(
          `${damaged.length === 1 ? 'page' : `${damaged.length} pages, first`} ${d.page} (extents ${pageExtents(d.page, h.extentCount).join(' to ')}) cannot be trusted: ${d.why}; no safe value exists for P bits`,
        )
      }
      if (h.kind === 'delta') for (const {page} of damaged) bits.setRange(...pageRange(page, h.extentCount))
      const m = new PersistentMap(path, Object.freeze(h), bits, file, {seqs, cur, damaged: damaged.map((d) => d.page)}, readOnly)
      if (damaged.length > 0 && h.kind === 'delta' && !readOnly) await m.repairDamagedPages()
      return m
    } catch (error) {
      await file.close().catch(() => undefined)
      throw error
    }
  }

  /**
   * One line for a warning when pages were damaged (undefined otherwise): names the file,
   * the pages and extents, and what was done about it.
   */
  damageReport(): string | undefined {
    const d = this.damagedPages
    if (d.length === 0) return undefined
    const list = d.slice(0, 5).map((p) => `${p} (extents ${pageExtents(p, this.bits.count).join('-')})`).join(', ') + (d.length > 5 ? `, and ${d.length - 5} more` : '')
    const one = d.length === 1
    const what =
      this.header.kind === 'delta'
        ? `every extent of ${one ? 'it' : 'them'} is taken as different and will be copied again`
        : `${one ? 'its' : 'their'} extents are copied from the clone again, overwriting host writes made to them during the restore`
    const fixed = this.header.kind === 'delta' && !this.readOnly ? ' (rewritten so on disk)' : ''
    return `map file ${this.path}: ${one ? 'page' : 'pages'} ${list} failed ${one ? 'its' : 'their'} checksum; ${what}${fixed}`
  }

  /**
   * Rewrite the pages found damaged at open, from memory, into both their slots, durably.
   * open() does it for a delta map; for P opened with damaged: 'clear', call it once D[c]
   * covers those extents durably (INV-1). Waits.
   */
  repairDamagedPages(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    if (this.closing) return Promise.reject(this.closedError())
    if (this.readOnly) return Promise.reject(this.readOnlyError())
    const pages = new Set(this.damagedPages.filter((p) => this.bothSlots.has(p)))
    return this.serial(() => this.writePages(pages))
  }

  /** bits.get(e). Does not wait. */
  get(e: number): boolean {
    return this.bits.get(e)
  }

  /**
   * True while a set or clear is not yet checkpointed: staged sets, clears, or tickets taken
   * and not yet committed. Does not wait.
   */
  hasPendingWork(): boolean {
    const {lo, hi} = this.pending
    return (hi > lo && (this.staged.anySet(lo, hi) || this.cleared.anySet(lo, hi))) || this.tickets.some((t) => !t.empty)
  }

  /** Page writes + datasyncs done so far (for tests and benchmarks). */
  get commits(): number {
    return this.datasyncs
  }

  /**
   * Set ahead (recipe 1): set [start, end) in memory at once, and resolve once the bits are
   * durable. Callers while a commit is in flight join the next commit (group commit). When
   * every bit is already on disk it resolves without I/O. Waits; may run alongside any
   * other method. Rejects (VolumeIoError) once the map has failed; the caller must then not
   * issue the write it guards.
   */
  setDurable(start: number, end: number): Promise<void> {
    return this.setDurableOrDone(start, end) ?? Promise.resolve()
  }

  /**
   * setDurable, but undefined instead of a resolved promise when every bit was already
   * durable: the host write path (one call per clone per write) then skips an await.
   */
  setDurableOrDone(start: number, end: number): Promise<void> | undefined {
    try {
      this.bits.setRange(start, end)
    } catch (error) {
      return Promise.reject(error)
    }
    if (this.failure) return Promise.reject(this.failure)
    if (this.closing) return Promise.reject(this.closedError())
    if (this.readOnly) return Promise.reject(this.readOnlyError())
    if (start === end) return undefined
    this.noteSet(start, end)
    if (this.replacing === 0 && this.durable.allSet(start, end)) {
      // In the image; on disk too, unless the commit in flight set some of them.
      return this.unsynced.anySet(start, end) ? this.inflight : undefined
    }
    if (this.batch) {
      this.batch.ranges.push([start, end])
      return this.batch.done
    }
    const ranges: Array<[number, number]> = [[start, end]]
    const done = this.serial(() => {
      // From now on new callers start the next batch.
      if (this.batch?.ranges === ranges) this.batch = undefined
      const pages = new Set<number>()
      for (const [s, e] of ranges) {
        if (this.durable.allSet(s, e)) continue
        this.unsynced.setRange(s, e)
        this.durable.setRange(s, e)
        for (let p = pageOf(s); p <= pageOf(e - 1); p++) pages.add(p)
      }
      return this.writePages(pages)
    })
    this.batch = {ranges, done}
    return done
  }

  /**
   * Set [start, end) in memory only, not yet eligible for disk: P before the host's data
   * write (recipe 3). Bits that were clear stay ineligible until stage() is called after the
   * write completes. Does not wait.
   */
  setVolatile(start: number, end: number): void {
    this.checkRange(start, end)
    // Bits clear until now: withdraw any eligibility they had from an earlier stage().
    for (let s = this.bits.nextClear(start); s >= 0 && s < end; ) {
      const next = this.bits.nextSet(s)
      const e = next < 0 || next > end ? end : next
      this.staged.clearRange(s, e)
      for (const t of this.tickets) t.sets.clearRange(s, e)
      s = e >= end ? -1 : this.bits.nextClear(e)
    }
    this.bits.setRange(start, end)
    this.noteSet(start, end)
  }

  /**
   * The bits of [start, end) that are set in memory now become eligible for the next
   * checkpoint (call it after the data write they protect completed). Does not wait.
   */
  stage(start: number, end: number): void {
    for (const [s, e] of this.bits.runs(start, end)) {
      this.staged.setRange(s, e)
      widen(this.pending, s, e)
    }
  }

  /**
   * Clear behind (recipe 2): clear [start, end) in memory now. It becomes durable only
   * through a checkpoint begun after this call. Does not wait.
   */
  clear(start: number, end: number): void {
    this.bits.clearRange(start, end)
    this.cleared.setRange(start, end)
    widen(this.pending, start, end)
  }

  /**
   * Take what may become durable: the staged sets and the clears so far, plus the work of
   * older tickets not yet committed; the pending lists start empty again. Next the caller
   * fdatasyncs the volumes the cleared extents were copied to, and the source for staged P
   * bits (recipe 5), then calls commitCheckpoint(ticket). Does not wait.
   */
  beginCheckpoint(): CheckpointTicket {
    const sets = this.staged
    const clears = this.cleared
    const span = this.pending
    for (const t of this.tickets) {
      const {lo, hi} = t.span
      if (hi <= lo) continue
      sets.orRange(t.sets, lo, hi)
      clears.orRange(t.clears, lo, hi)
      widen(span, lo, hi)
    }
    this.staged = new ExtentBitmap(this.bits.count)
    this.cleared = new ExtentBitmap(this.bits.count)
    this.pending = emptySpan()
    const t = new CheckpointTicket(this, sets, clears, span)
    this.tickets.push(t)
    return t
  }

  /**
   * Apply a ticket to the file: its staged bits still set in memory become durably set; its
   * clears still clear in memory, and not set again since the ticket was taken, become
   * durably clear. Writes only the pages that change (rendered from the durable image),
   * then one datasync. Retires older tickets. A retired or already committed ticket does
   * nothing. Waits; serialized with every other write of this map. Must only be called
   * after the data the ticket's clears depend on is durable (recipe 5).
   */
  commitCheckpoint(t: CheckpointTicket): Promise<void> {
    if (t.owner !== this) return Promise.reject(new Error(`checkpoint ticket of map ${t.owner.path} committed to map ${this.path}`))
    if (this.failure) return Promise.reject(this.failure)
    if (!t.open) return Promise.resolve()
    if (this.closing) return Promise.reject(this.closedError())
    if (this.readOnly) return Promise.reject(this.readOnlyError())
    return this.serial(() => {
      if (!t.open) return Promise.resolve()
      const i = this.tickets.indexOf(t)
      // This ticket holds the work of every older one: retire them with it.
      for (const old of this.tickets.splice(0, i + 1)) old.open = false
      const pages = new Set<number>()
      const mem = this.bits.words
      const dur = this.durable.words
      const uns = this.unsynced.words
      const sets = t.sets.words
      const clears = t.clears.words
      // Only the words of the ticket's span can hold its sets and clears.
      const {lo, hi} = t.span
      const last = hi > lo ? Math.min(dur.length, Math.ceil(hi / 32)) : 0
      let page = -1
      for (let w = hi > lo ? Math.floor(lo / 32) : 0; w < last; w++) {
        if ((sets[w] | clears[w]) === 0) continue
        const was = dur[w]
        const next = ((was | (sets[w] & mem[w])) & ~(clears[w] & ~mem[w])) >>> 0
        if (next !== was) {
          uns[w] |= next & ~was
          dur[w] = next
          if (pageOfWord(w) !== page) {
            page = pageOfWord(w)
            pages.add(page)
          }
        }
      }
      return this.writePages(pages)
    })
  }

  /**
   * Give up a ticket whose data never became durable (an fdatasync of the volume its
   * clears were copied to failed, e.g. a remote clone that vanished): its clears, and those
   * of the older tickets it holds, are set again in memory and staged, so the next
   * checkpoint makes them durably set. Re-setting a bit is always safe (it costs a recopy);
   * keeping the clear would let a crash forget data the clone never got (INV-1). Its
   * staged sets go back to the pending list. Does not wait.
   */
  abandonCheckpoint(t: CheckpointTicket): void {
    if (t.owner !== this || !t.open) return
    const i = this.tickets.indexOf(t)
    for (const old of this.tickets.splice(0, i + 1)) old.open = false
    // Its bits (and those of the older tickets it holds) lie in its span.
    const {lo, hi} = t.span
    if (hi <= lo) return
    this.bits.orRange(t.clears, lo, hi)
    this.staged.orRange(t.clears, lo, hi)
    this.staged.orRange(t.sets, lo, hi)
    widen(this.pending, lo, hi)
    // A newer ticket must not clear these bits durably either: their copies are the lost ones.
    this.cleared.andNotRange(t.clears, lo, hi)
    for (const newer of this.tickets) newer.clears.andNotRange(t.clears, lo, hi)
  }

  /**
   * Make memory and disk equal `bits`, durably: memory at once, then the whole bitmap is
   * rewritten and datasynced after the commits already queued. Drops staged sets, clears and
   * open tickets. Used for D[c] := P at the end of a restore, and for "all bits set". Every
   * bit it clears must already be true on disk (e.g. the source was fdatasynced first).
   * Waits. Must not run alongside host writes, copies or checkpoints of this map.
   */
  replaceAll(bits: ExtentBitmap): Promise<void> {
    if (bits.count !== this.bits.count) return Promise.reject(new RangeError(`map ${this.path} has ${this.bits.count} extents, the new bitmap ${bits.count}`))
    if (this.failure) return Promise.reject(this.failure)
    if (this.closing) return Promise.reject(this.closedError())
    if (this.readOnly) return Promise.reject(this.readOnlyError())
    const image = bits.clone()
    // A batch not yet started would write before us and be undone: later callers start a new one.
    this.batch = undefined
    this.bits.copyFrom(image)
    this.staged.clearAll()
    this.cleared.clearAll()
    this.pending = emptySpan()
    for (const t of this.tickets) t.open = false
    this.tickets = []
    this.replacing++
    return this.serial(() => {
      this.replacing--
      const u = this.unsynced.words
      const d = this.durable.words
      const n = image.words
      for (let w = 0; w < d.length; w++) u[w] |= n[w] & ~d[w]
      this.durable.copyFrom(image)
      const pages = new Set<number>()
      for (let p = 0; p < bitmapPages(image.count); p++) pages.add(p)
      return this.writePages(pages)
    })
  }

  /**
   * Wait for the commits in flight and queued, then close the file. Durable requests
   * (setDurable, commitCheckpoint, replaceAll) made once close() was called reject. Waits.
   */
  async close(): Promise<void> {
    this.closing = true
    await this.chain
    const f = this.file
    this.file = undefined
    await f?.close()
  }

  private checkRange(start: number, end: number): void {
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > this.bits.count || start > end)
      throw new RangeError(`extent range [${start}, ${end}) is outside map ${this.path}'s [0, ${this.bits.count})`)
  }

  /** A set makes the bit ineligible to be durably cleared by any ticket taken before it. */
  private noteSet(start: number, end: number): void {
    this.cleared.clearRange(start, end)
    for (const t of this.tickets) t.clears.clearRange(start, end)
  }

  /** Run `fn` when every earlier write of this map has settled (one commit at a time). */
  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.chain.then(fn)
    this.chain = run.catch(() => undefined)
    return run
  }

  /**
   * Write the given bitmap pages from `durable` (adjacent pages in one write), then one
   * datasync. Must be called synchronously after `durable` was changed, inside serial(), so
   * `inflight` covers the bits in `unsynced`.
   */
  private writePages(pages: Set<number>): Promise<void> {
    if (this.failure) return Promise.reject(this.failure)
    const f = this.file
    if (!f) return Promise.reject(this.closedError())
    if (pages.size === 0) return Promise.resolve()
    this.inflight = this.writeAndSync(f, [...pages].sort((a, b) => a - b)).then(
      () => {
        this.unsynced.clearAll()
      },
      (error: unknown) => {
        // From now on nothing may be taken as durable (a set ahead would be a lie): fail.
        this.failure ??= ioError(this.path, 'could not be written', error)
        throw this.failure
      },
    )
    return this.inflight
  }

  private async writeAndSync(f: DurableFile, pages: number[]): Promise<void> {
    const done: Array<[page: number, slot: number, seq: number]> = []
    for (const p of pages) {
      // The slot holding the page's last durable image is left alone (design notes); a page
      // whose image was unknown gets both, so the repair holds whatever the other slot had.
      const slots = this.bothSlots.has(p) ? [0, 1] : [1 - this.cur[p]]
      let seq = this.seqs[p]
      for (const slot of slots) {
        seq++
        const buf = Buffer.alloc(PAGE)
        encodeSlot(this.durable, p, slot, seq, buf)
        // One write at a time, in page order.
        await f.write(buf, slotOffset(p, slot))
        done.push([p, slot, seq])
      }
    }
    await f.datasync()
    for (const [p, slot, seq] of done) {
      this.cur[p] = slot
      this.seqs[p] = seq
      this.bothSlots.delete(p)
    }
    this.datasyncs++
  }

  private readOnlyError(): Error {
    return new Error(`map file ${this.path} is open read-only`)
  }

  private closedError(): Error {
    return new Error(`map file ${this.path} is closed`)
  }
}

/** The file of an in-memory map: a buffer, so the map code runs unchanged; nothing survives the process. */
class HeldImage implements DurableFile {
  constructor(
    readonly path: string,
    private data: Buffer,
  ) {}

  read(buf: Uint8Array, position: number, length = buf.length): Promise<number> {
    const n = Math.max(0, Math.min(length, this.data.length - position))
    if (n > 0) buf.set(this.data.subarray(position, position + n))
    return Promise.resolve(n)
  }

  write(buf: Uint8Array, position: number): Promise<void> {
    if (position + buf.length > this.data.length) this.resize(position + buf.length)
    this.data.set(buf, position)
    return Promise.resolve()
  }

  datasync(): Promise<void> {
    return Promise.resolve()
  }

  size(): Promise<number> {
    return Promise.resolve(this.data.length)
  }

  truncate(length: number): Promise<void> {
    this.resize(length)
    return Promise.resolve()
  }

  close(): Promise<void> {
    return Promise.resolve()
  }

  private resize(length: number): void {
    const next = Buffer.alloc(length)
    this.data.copy(next, 0, 0, Math.min(length, this.data.length))
    this.data = next
  }
}

async function openFile(fs: DurableFs, path: string, kind: MapKind, write: boolean): Promise<DurableFile> {
  try {
    // Read-only (status): read whole at open, then closed.
    return await fs.open(path, write ? {write, quick: true} : {write, readNow: true})
  } catch (error) {
    if (errnoOf(error) === 'ENOENT') throw new CorruptStateError(`map file ${path} is missing`, fixFor(kind))
    throw ioError(path, 'cannot be opened', error)
  }
}

function ioError(path: string, what: string, error: unknown): VolumeIoError {
  if (error instanceof VolumeIoError) return error
  const errno = errnoOf(error)
  const detail = error instanceof Error ? error.message : String(error)
  return new VolumeIoError(
    `map file ${path} ${what}: ${detail}`,
    errno,
    'check the disk holding the state directory, then run the command again (the map on disk errs only towards extra copies)',
  )
}
