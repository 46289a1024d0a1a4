/**
 * One bit per extent, with word-level range operations. Byte layout (toBytes, and the map
 * file's bitmap): bit e lives in byte e >> 3 at bit (e & 7), little-endian bit order.
 * Bits past `count` in the last word are always zero.
 */
export class ExtentBitmap {
  readonly words: Uint32Array

  constructor(readonly count: number) {
    if (!Number.isInteger(count) || count < 0) throw new RangeError(`bitmap size ${count} is not a whole number`)
    this.words = new Uint32Array(Math.ceil(count / 32))
  }

  static fromBytes(count: number, bytes: Uint8Array): ExtentBitmap {
    const b = new ExtentBitmap(count)
    const need = Math.ceil(count / 8)
    if (bytes.length < need) throw new RangeError(`bitmap of ${count} bits needs ${need} bytes, got ${bytes.length}`)
    for (let w = 0; w < b.words.length; w++) {
      const i = w * 4
      b.words[w] = ((bytes[i] ?? 0) | ((bytes[i + 1] ?? 0) << 8) | ((bytes[i + 2] ?? 0) << 16) | ((bytes[i + 3] ?? 0) << 24)) >>> 0
    }
    b.trimTail()
    return b
  }

  toBytes(): Uint8Array {
    const out = new Uint8Array(Math.ceil(this.count / 8))
    this.copyBytes(out, 0, 0, out.length)
    return out
  }

  /** Copy bitmap bytes [fromByte, fromByte+length) into out at outOffset (for page writes). */
  copyBytes(out: Uint8Array, outOffset: number, fromByte: number, length: number): void {
    const limit = Math.ceil(this.count / 8)
    for (let i = 0; i < length; i++) {
      const byte = fromByte + i
      out[outOffset + i] = byte < limit ? (this.words[byte >> 2] >>> ((byte & 3) * 8)) & 0xff : 0
    }
  }

  private check(e: number): void {
    if (!Number.isInteger(e) || e < 0 || e >= this.count) throw new RangeError(`extent ${e} is outside 0..${this.count - 1}`)
  }

  private checkRange(start: number, end: number): void {
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > this.count || start > end)
      throw new RangeError(`range [${start}, ${end}) is outside 0..${this.count}`)
  }

  private trimTail(): void {
    const r = this.count & 31
    if (r !== 0 && this.words.length > 0) this.words[this.words.length - 1] &= (2 ** r - 1) >>> 0
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

  /** Mask of bits [lo, hi) within one word, 0 <= lo < hi <= 32. */
  private static mask(lo: number, hi: number): number {
    const upper = hi === 32 ? 0xffffffff : (1 << hi) - 1
    return (upper & ~((1 << lo) - 1)) >>> 0
  }

  private forWords(start: number, end: number, fn: (w: number, mask: number) => boolean | void): boolean {
    this.checkRange(start, end)
    if (start === end) return false
    const ws = start >>> 5
    const we = (end - 1) >>> 5
    for (let w = ws; w <= we; w++) {
      const lo = w === ws ? start & 31 : 0
      const hi = w === we ? ((end - 1) & 31) + 1 : 32
      if (fn(w, ExtentBitmap.mask(lo, hi)) === true) return true
    }
    return false
  }

  setRange(start: number, end: number): void {
    this.forWords(start, end, (w, m) => {
      this.words[w] |= m
    })
  }

  clearRange(start: number, end: number): void {
    this.forWords(start, end, (w, m) => {
      this.words[w] &= ~m
    })
  }

  anySet(start: number, end: number): boolean {
    return this.forWords(start, end, (w, m) => (this.words[w] & m) !== 0)
  }

  allSet(start: number, end: number): boolean {
    return !this.forWords(start, end, (w, m) => ((this.words[w] & m) >>> 0) !== m)
  }

  countSet(start = 0, end = this.count): number {
    let n = 0
    this.forWords(start, end, (w, m) => {
      n += popcount32((this.words[w] & m) >>> 0)
    })
    return n
  }

  /** First set bit at or after `from`, or -1. */
  nextSet(from: number): number {
    if (from >= this.count) return -1
    if (from < 0) from = 0
    let w = from >>> 5
    let word = (this.words[w] & ExtentBitmap.mask(from & 31, 32)) >>> 0
    for (;;) {
      if (word !== 0) {
        const e = w * 32 + ctz32(word)
        return e < this.count ? e : -1
      }
      w++
      if (w >= this.words.length) return -1
      word = this.words[w]
    }
  }

  /** First clear bit at or after `from`, or -1. */
  nextClear(from: number): number {
    if (from >= this.count) return -1
    if (from < 0) from = 0
    let w = from >>> 5
    let word = (~this.words[w] & ExtentBitmap.mask(from & 31, 32)) >>> 0
    for (;;) {
      if (word !== 0) {
        const e = w * 32 + ctz32(word)
        return e < this.count ? e : -1
      }
      w++
      if (w >= this.words.length) return -1
      word = ~this.words[w] >>> 0
    }
  }

  /** Runs [start, endExclusive) of set bits within [from, to). */
  *runs(from = 0, to = this.count): Generator<[number, number]> {
    let s = this.nextSet(from)
    while (s >= 0 && s < to) {
      let e = this.nextClear(s)
      if (e < 0 || e > to) e = to
      yield [s, e]
      s = e >= to ? -1 : this.nextSet(e)
    }
  }

  private same(other: ExtentBitmap): void {
    if (other.count !== this.count) throw new RangeError(`bitmaps of ${this.count} and ${other.count} bits`)
  }

  or(other: ExtentBitmap): void {
    this.same(other)
    for (let i = 0; i < this.words.length; i++) this.words[i] |= other.words[i]
  }

  and(other: ExtentBitmap): void {
    this.same(other)
    for (let i = 0; i < this.words.length; i++) this.words[i] &= other.words[i]
  }

  andNot(other: ExtentBitmap): void {
    this.same(other)
    for (let i = 0; i < this.words.length; i++) this.words[i] &= ~other.words[i]
  }

  copyFrom(other: ExtentBitmap): void {
    this.same(other)
    this.words.set(other.words)
  }

  clone(): ExtentBitmap {
    const b = new ExtentBitmap(this.count)
    b.words.set(this.words)
    return b
  }

  equals(other: ExtentBitmap): boolean {
    if (other.count !== this.count) return false
    for (let i = 0; i < this.words.length; i++) if (this.words[i] !== other.words[i]) return false
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
    for (let i = 0; i < this.words.length; i++) if (this.words[i] !== 0) return false
    return true
  }
}

function popcount32(x: number): number {
  x -= (x >>> 1) & 0x55555555
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333)
  x = (x + (x >>> 4)) & 0x0f0f0f0f
  return Math.imul(x, 0x01010101) >>> 24
}

function ctz32(x: number): number {
  return 31 - Math.clz32(x & -x)
}
