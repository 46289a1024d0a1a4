/** Most extents a bitmap can track (indices must fit the 32-bit shifts): 256 TiB at 64 KiB extents. */
export const MAX_EXTENTS = 2 ** 32

/**
 * On a little-endian machine the words' memory is the byte layout itself (byte b is bits
 * 8*(b & 3).. of word b >> 2), so the byte conversions are one copy instead of a loop per byte:
 * a 1 TiB map (2 MiB of bitmap) is rendered at every create and checkpoint.
 */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1

/**
 * One bit per extent, with word-level range operations (DESIGN §1: delta maps D[k], the
 * protected restore map P, and any scratch set of extents).
 *
 * Byte layout (toBytes, fromBytes, and the bitmap pages of a map file): bit e lives in byte
 * e >> 3 at bit (e & 7), little-endian bit order. In memory, bit e is bit (e & 31) of word
 * e >> 5, so byte b is bits 8*(b & 3).. of word b >> 2 on every platform.
 *
 * Invariant: bits at and past `count` in the last word are always zero, so word-wide
 * operations (countSet, isEmpty, equals, or/and/andNot) need no masking.
 *
 * Indices are checked: a non-integer or out-of-range extent or range throws RangeError.
 * Nothing here waits or does I/O.
 */
export class ExtentBitmap {
  /**
   * The backing words (bit e is bit e & 31 of words[e >> 5]). For the map module's
   * word-level loops; anyone else should use the methods (a stray bit past `count` would
   * break the invariant above).
   * @internal
   */
  readonly words: Uint32Array

  constructor(readonly count: number) {
    if (!Number.isInteger(count) || count < 0 || count > MAX_EXTENTS)
      throw new RangeError(`bitmap size ${count} is not a whole number of extents in 0..${MAX_EXTENTS}`)
    this.words = new Uint32Array(Math.ceil(count / 32))
  }

  /** A bitmap of `count` bits from its byte layout; bytes past ceil(count/8), and bits past `count`, are ignored. */
  static fromBytes(count: number, bytes: Uint8Array): ExtentBitmap {
    const b = new ExtentBitmap(count)
    const need = Math.ceil(count / 8)
    if (bytes.length < need) throw new RangeError(`a bitmap of ${count} bits needs ${need} bytes, got ${bytes.length}`)
    const w = b.words
    if (LITTLE_ENDIAN) {
      new Uint8Array(w.buffer, w.byteOffset, w.byteLength).set(bytes.subarray(0, need))
      b.trimTail()
      return b
    }
    const full = need >> 2
    for (let i = 0; i < full; i++) {
      const o = i << 2
      w[i] = (bytes[o] | (bytes[o + 1] << 8) | (bytes[o + 2] << 16) | (bytes[o + 3] << 24)) >>> 0
    }
    for (let o = full << 2; o < need; o++) w[o >> 2] |= bytes[o] << ((o & 3) * 8)
    b.trimTail()
    return b
  }

  /** The byte layout, ceil(count/8) bytes; bits past `count` are zero. */
  toBytes(): Uint8Array {
    const out = new Uint8Array(Math.ceil(this.count / 8))
    this.copyBytes(out, 0, 0, out.length)
    return out
  }

  /**
   * Render bitmap bytes [fromByte, fromByte + length) into out[outOffset..]; bytes past the
   * bitmap's end are written as zero (the padding of a map file's last page).
   */
  copyBytes(out: Uint8Array, outOffset: number, fromByte: number, length: number): void {
    const limit = Math.ceil(this.count / 8)
    const w = this.words
    if (LITTLE_ENDIAN) {
      // Bytes past `limit` inside the last word are zero already (the invariant above).
      const n = Math.max(0, Math.min(length, limit - fromByte))
      if (n > 0) out.set(new Uint8Array(w.buffer, w.byteOffset + fromByte, n), outOffset)
      if (n < length) out.fill(0, outOffset + n, outOffset + length)
      return
    }
    for (let i = 0; i < length; i++) {
      const byte = fromByte + i
      out[outOffset + i] = byte < limit ? (w[byte >> 2] >>> ((byte & 3) * 8)) & 0xff : 0
    }
  }

  get(e: number): boolean {
    this.check(e)
    return ((this.words[e >>> 5] >>> (e & 31)) & 1) === 1
  }

  set(e: number): void {
    this.check(e)
    this.words[e >>> 5] |= 1 << (e & 31)
  }

  clear(e: number): void {
    this.check(e)
    this.words[e >>> 5] &= ~(1 << (e & 31))
  }

  /** Set [start, end). */
  setRange(start: number, end: number): void {
    this.checkRange(start, end)
    if (start === end) return
    const w = this.words
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    if (ws === we) {
      w[ws] |= mask(start & 31, ((end - 1) & 31) + 1)
      return
    }
    w[ws] |= mask(start & 31, 32)
    w.fill(0xffffffff, ws + 1, we)
    w[we] |= mask(0, ((end - 1) & 31) + 1)
  }

  /** Clear [start, end). */
  clearRange(start: number, end: number): void {
    this.checkRange(start, end)
    if (start === end) return
    const w = this.words
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    if (ws === we) {
      w[ws] &= ~mask(start & 31, ((end - 1) & 31) + 1)
      return
    }
    w[ws] &= ~mask(start & 31, 32)
    w.fill(0, ws + 1, we)
    w[we] &= ~mask(0, ((end - 1) & 31) + 1)
  }

  /** Is any bit of [start, end) set? False for an empty range. */
  anySet(start: number, end: number): boolean {
    this.checkRange(start, end)
    if (start === end) return false
    const w = this.words
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    if (ws === we) return (w[ws] & mask(start & 31, ((end - 1) & 31) + 1)) !== 0
    if ((w[ws] & mask(start & 31, 32)) !== 0 || (w[we] & mask(0, ((end - 1) & 31) + 1)) !== 0) return true
    for (let i = ws + 1; i < we; i++) if (w[i] !== 0) return true
    return false
  }

  /** Is every bit of [start, end) set? True for an empty range. */
  allSet(start: number, end: number): boolean {
    this.checkRange(start, end)
    if (start === end) return true
    const w = this.words
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    for (let i = ws; i <= we; i++) {
      const m = mask(i === ws ? start & 31 : 0, i === we ? ((end - 1) & 31) + 1 : 32)
      if (((w[i] & m) >>> 0) !== m) return false
    }
    return true
  }

  /** Number of set bits in [start, end). */
  countSet(start = 0, end = this.count): number {
    this.checkRange(start, end)
    if (start === end) return 0
    const w = this.words
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    if (ws === we) return popcount32((w[ws] & mask(start & 31, ((end - 1) & 31) + 1)) >>> 0)
    // The end words masked, the words between whole (zero words cost a compare).
    let n = popcount32((w[ws] & mask(start & 31, 32)) >>> 0) + popcount32((w[we] & mask(0, ((end - 1) & 31) + 1)) >>> 0)
    for (let i = ws + 1; i < we; i++) {
      const x = w[i]
      if (x !== 0) n += popcount32(x)
    }
    return n
  }

  /** Number of bits set here and clear in `other` (same count): |this \ other|, word at a time. */
  countAndNot(other: ExtentBitmap): number {
    this.same(other)
    const a = this.words
    const b = other.words
    let n = 0
    for (let i = 0; i < a.length; i++) {
      const x = a[i] & ~b[i]
      if (x !== 0) n += popcount32(x >>> 0)
    }
    return n
  }

  /** First set bit at or after `from` (0 <= from; from >= count gives -1), or -1 when none. */
  nextSet(from: number): number {
    this.checkFrom(from)
    return this.scan(from, this.count, 0)
  }

  /** First clear bit at or after `from` (0 <= from; from >= count gives -1), or -1 when none. */
  nextClear(from: number): number {
    this.checkFrom(from)
    return this.scan(from, this.count, 0xffffffff)
  }

  /** The runs of set bits within [from, to), as [start, endExclusive], ascending; clipped to the range. */
  *runs(from = 0, to = this.count): Generator<[number, number]> {
    this.checkRange(from, to)
    let s = this.scan(from, to, 0)
    while (s >= 0) {
      const c = this.scan(s, to, 0xffffffff)
      const e = c < 0 ? to : c
      yield [s, e]
      s = e >= to ? -1 : this.scan(e, to, 0)
    }
  }

  /** this |= other (same count). */
  or(other: ExtentBitmap): void {
    this.same(other)
    const a = this.words
    const b = other.words
    for (let i = 0; i < a.length; i++) a[i] |= b[i]
  }

  /** this &= other (same count). */
  and(other: ExtentBitmap): void {
    this.same(other)
    const a = this.words
    const b = other.words
    for (let i = 0; i < a.length; i++) a[i] &= b[i]
  }

  /** this &= ~other (same count). */
  andNot(other: ExtentBitmap): void {
    this.same(other)
    const a = this.words
    const b = other.words
    for (let i = 0; i < a.length; i++) a[i] &= ~b[i]
  }

  /**
   * this |= other over extents [start, end) only (same count): the bits of `other` outside
   * the range are not looked at. For merging bitmaps whose set bits are known to lie in a
   * span, at the span's cost instead of the whole bitmap's.
   */
  orRange(other: ExtentBitmap, start: number, end: number): void {
    const a = this.words
    const b = other.words
    this.eachWordOf(other, start, end, (i, m) => {
      a[i] |= b[i] & m
    })
  }

  /** this &= ~other over extents [start, end) only (same count); see orRange. */
  andNotRange(other: ExtentBitmap, start: number, end: number): void {
    const a = this.words
    const b = other.words
    this.eachWordOf(other, start, end, (i, m) => {
      a[i] &= ~(b[i] & m)
    })
  }

  /** Each word index that [start, end) touches, with the mask of the range's bits in it. */
  private eachWordOf(other: ExtentBitmap, start: number, end: number, fn: (word: number, mask: number) => void): void {
    this.same(other)
    this.checkRange(start, end)
    if (start === end) return
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    const last = mask(0, ((end - 1) & 31) + 1)
    if (ws === we) return fn(ws, mask(start & 31, 32) & last)
    fn(ws, mask(start & 31, 32))
    for (let i = ws + 1; i < we; i++) fn(i, 0xffffffff)
    fn(we, last)
  }

  /** this := other (same count). */
  copyFrom(other: ExtentBitmap): void {
    this.same(other)
    this.words.set(other.words)
  }

  clone(): ExtentBitmap {
    const b = new ExtentBitmap(this.count)
    b.words.set(this.words)
    return b
  }

  /** Same count and same bits. */
  equals(other: ExtentBitmap): boolean {
    if (other.count !== this.count) return false
    const a = this.words
    const b = other.words
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
    return true
  }

  setAll(): void {
    this.words.fill(0xffffffff)
    this.trimTail()
  }

  clearAll(): void {
    this.words.fill(0)
  }

  isEmpty(): boolean {
    const w = this.words
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false
    return true
  }

  /**
   * First index in [from, to) whose bit differs from the bits of `invert` (0: find a set bit,
   * 0xffffffff: find a clear bit), or -1. Word at a time.
   */
  private scan(from: number, to: number, invert: number): number {
    if (from >= to) return -1
    const w = this.words
    const last = (to - 1) >>> 5
    let i = from >>> 5
    let word = ((w[i] ^ invert) & mask(from & 31, 32)) >>> 0
    for (;;) {
      if (word !== 0) {
        const e = i * 32 + ctz32(word)
        return e < to ? e : -1
      }
      if (++i > last) return -1
      word = (w[i] ^ invert) >>> 0
    }
  }

  private check(e: number): void {
    if (!Number.isInteger(e) || e < 0 || e >= this.count) throw new RangeError(`extent ${e} is outside the bitmap's 0..${this.count - 1}`)
  }

  private checkFrom(from: number): void {
    if (!Number.isInteger(from) || from < 0) throw new RangeError(`search start ${from} is not an extent index (0 or more)`)
  }

  private checkRange(start: number, end: number): void {
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > this.count || start > end)
      throw new RangeError(`extent range [${start}, ${end}) is outside the bitmap's [0, ${this.count})`)
  }

  private same(other: ExtentBitmap): void {
    if (other.count !== this.count) throw new RangeError(`bitmaps of ${this.count} and ${other.count} extents cannot be combined`)
  }

  private trimTail(): void {
    const r = this.count & 31
    if (r !== 0) this.words[this.words.length - 1] &= mask(0, r)
  }
}

/** Bits [lo, hi) of a word, 0 <= lo < hi <= 32, as an unsigned number. */
function mask(lo: number, hi: number): number {
  const upper = hi === 32 ? 0xffffffff : (1 << hi) - 1
  return (upper & ~((1 << lo) - 1)) >>> 0
}

function popcount32(x: number): number {
  x -= (x >>> 1) & 0x55555555
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333)
  x = (x + (x >>> 4)) & 0x0f0f0f0f
  return Math.imul(x, 0x01010101) >>> 24
}

/** Index of the lowest set bit of a non-zero word. */
function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x)
}
