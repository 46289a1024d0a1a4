/**
 * ExtentBitmap against a naive boolean-array model (fast-check): random sequences of
 * set/clear/setRange/clearRange/or/andNot/and/orRange/andNotRange/copyFrom/setAll/clearAll on sizes that are
 * mostly not multiples of 32, with indices biased to word boundaries so ranges cross them,
 * then every query compared with the model. Plus the CRC-32C vectors the map header relies on.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import fc from 'fast-check'
import {ExtentBitmap} from '../../src/map/ExtentBitmap.js'
import {crc32c} from '../../src/map/crc32c.js'

type Op =
  | {op: 'set' | 'clear'; a: number}
  | {op: 'setRange' | 'clearRange'; a: number; b: number}
  | {op: 'or' | 'andNot' | 'and' | 'copyFrom'; bits: boolean[]}
  | {op: 'orRange' | 'andNotRange'; bits: boolean[]; a: number; b: number}
  | {op: 'setAll' | 'clearAll'}

class Model {
  bits: boolean[]
  constructor(readonly count: number) {
    this.bits = new Array<boolean>(count).fill(false)
  }
  nextSet(from: number): number {
    for (let i = Math.max(0, from); i < this.count; i++) if (this.bits[i]) return i
    return -1
  }
  nextClear(from: number): number {
    for (let i = Math.max(0, from); i < this.count; i++) if (!this.bits[i]) return i
    return -1
  }
  runs(from: number, to: number): Array<[number, number]> {
    const out: Array<[number, number]> = []
    let i = from
    while (i < to) {
      if (!this.bits[i]) {
        i++
        continue
      }
      const s = i
      while (i < to && this.bits[i]) i++
      out.push([s, i])
    }
    return out
  }
  toBytes(): Uint8Array {
    const out = new Uint8Array(Math.ceil(this.count / 8))
    for (let i = 0; i < this.count; i++) if (this.bits[i]) out[i >> 3] |= 1 << (i & 7)
    return out
  }
}

function fromBools(bits: boolean[]): ExtentBitmap {
  const b = new ExtentBitmap(bits.length)
  bits.forEach((v, i) => v && b.set(i))
  return b
}

/** A count, usually not a multiple of 32, and op sequences valid for it. */
const scenario = fc
  .oneof(fc.integer({min: 1, max: 300}), fc.constantFrom(1, 7, 8, 31, 32, 33, 63, 64, 65, 95, 96, 97, 129, 257))
  .chain((count) => {
    // Half the time a word boundary ± 1, so ranges start, end and cross there.
    const near = (max: number): fc.Arbitrary<number> =>
      fc.oneof(
        fc.integer({min: 0, max}),
        fc.tuple(fc.integer({min: 0, max: Math.floor(max / 32)}), fc.integer({min: -1, max: 1})).map(([w, d]) => Math.min(max, Math.max(0, w * 32 + d))),
      )
    const idx = near(count - 1)
    const range = fc.tuple(near(count), near(count)).map(([x, y]) => [Math.min(x, y), Math.max(x, y)] as const)
    const other = fc.oneof(
      fc.array(fc.boolean(), {minLength: count, maxLength: count}),
      range.map(([a, b]) => Array.from({length: count}, (_, i) => i >= a && i < b)),
    )
    const op: fc.Arbitrary<Op> = fc.oneof(
      {weight: 3, arbitrary: fc.record({op: fc.constantFrom('set' as const, 'clear' as const), a: idx})},
      {weight: 4, arbitrary: range.chain(([a, b]) => fc.record({op: fc.constantFrom('setRange' as const, 'clearRange' as const), a: fc.constant(a), b: fc.constant(b)}))},
      {weight: 2, arbitrary: fc.record({op: fc.constantFrom('or' as const, 'andNot' as const, 'and' as const, 'copyFrom' as const), bits: other})},
      {
        weight: 2,
        arbitrary: fc.tuple(fc.constantFrom('orRange' as const, 'andNotRange' as const), other, range).map(([op, bits, [a, b]]) => ({op, bits, a, b})),
      },
      {weight: 1, arbitrary: fc.record({op: fc.constantFrom('setAll' as const, 'clearAll' as const)})},
    )
    return fc.record({
      count: fc.constant(count),
      ops: fc.array(op, {maxLength: 40}),
      queries: fc.array(range, {minLength: 1, maxLength: 8}),
    })
  })

function apply(b: ExtentBitmap, m: Model, o: Op): void {
  switch (o.op) {
    case 'set':
      b.set(o.a)
      m.bits[o.a] = true
      break
    case 'clear':
      b.clear(o.a)
      m.bits[o.a] = false
      break
    case 'setRange':
      b.setRange(o.a, o.b)
      for (let i = o.a; i < o.b; i++) m.bits[i] = true
      break
    case 'clearRange':
      b.clearRange(o.a, o.b)
      for (let i = o.a; i < o.b; i++) m.bits[i] = false
      break
    case 'or':
      b.or(fromBools(o.bits))
      o.bits.forEach((v, i) => (m.bits[i] = m.bits[i] || v))
      break
    case 'andNot':
      b.andNot(fromBools(o.bits))
      o.bits.forEach((v, i) => (m.bits[i] = m.bits[i] && !v))
      break
    case 'and':
      b.and(fromBools(o.bits))
      o.bits.forEach((v, i) => (m.bits[i] = m.bits[i] && v))
      break
    case 'orRange':
      b.orRange(fromBools(o.bits), o.a, o.b)
      for (let i = o.a; i < o.b; i++) m.bits[i] = m.bits[i] || o.bits[i]
      break
    case 'andNotRange':
      b.andNotRange(fromBools(o.bits), o.a, o.b)
      for (let i = o.a; i < o.b; i++) m.bits[i] = m.bits[i] && !o.bits[i]
      break
    case 'copyFrom':
      b.copyFrom(fromBools(o.bits))
      m.bits = [...o.bits]
      break
    case 'setAll':
      b.setAll()
      m.bits.fill(true)
      break
    case 'clearAll':
      b.clearAll()
      m.bits.fill(false)
      break
  }
}

function compare(b: ExtentBitmap, m: Model, queries: ReadonlyArray<readonly [number, number]>): void {
  for (let i = 0; i < m.count; i++) assert.equal(b.get(i), m.bits[i], `get(${i})`)
  assert.equal(b.countSet(), m.bits.filter(Boolean).length, 'countSet()')
  // Against a mask of every other bit from a query's start (any pattern would do).
  const s0 = queries[0][0]
  const mask = Array.from({length: m.count}, (_, i) => i >= s0 && i % 2 === 0)
  assert.equal(b.countAndNot(fromBools(mask)), m.bits.filter((v, i) => v && !mask[i]).length, 'countAndNot()')
  assert.equal(b.isEmpty(), !m.bits.some(Boolean), 'isEmpty()')
  for (const [s, e] of queries) {
    const slice = m.bits.slice(s, e)
    assert.equal(b.anySet(s, e), slice.some(Boolean), `anySet(${s}, ${e})`)
    assert.equal(b.allSet(s, e), slice.every(Boolean), `allSet(${s}, ${e})`)
    assert.equal(b.countSet(s, e), slice.filter(Boolean).length, `countSet(${s}, ${e})`)
    assert.equal(b.nextSet(s), m.nextSet(s), `nextSet(${s})`)
    assert.equal(b.nextClear(s), m.nextClear(s), `nextClear(${s})`)
    assert.deepEqual([...b.runs(s, e)], m.runs(s, e), `runs(${s}, ${e})`)
  }
  for (let i = 0; i <= m.count; i++) {
    assert.equal(b.nextSet(i), m.nextSet(i), `nextSet(${i})`)
    assert.equal(b.nextClear(i), m.nextClear(i), `nextClear(${i})`)
  }
  assert.deepEqual([...b.runs()], m.runs(0, m.count), 'runs()')
  const bytes = b.toBytes()
  assert.deepEqual(bytes, m.toBytes(), 'toBytes()')
  // copyBytes of any byte window, running past the end (padding: zeros), at an offset into
  // a buffer whose other bytes it must not touch.
  for (const [s, e] of queries) {
    const from = s >> 1
    const length = e - s + 5
    const out = new Uint8Array(length + 4).fill(0xaa)
    b.copyBytes(out, 2, from, length)
    const want = Array.from({length}, (_, i) => bytes[from + i] ?? 0)
    assert.deepEqual([...out.subarray(2, 2 + length)], want, `copyBytes(from ${from}, length ${length})`)
    assert.deepEqual([...out.subarray(0, 2), ...out.subarray(2 + length)], [0xaa, 0xaa, 0xaa, 0xaa], 'copyBytes writes only its window')
  }
  // Round trip through bytes, including garbage past `count` in the last byte.
  const padded = new Uint8Array(bytes.length + 4)
  padded.set(bytes)
  if (m.count % 8 !== 0) padded[bytes.length - 1] |= 0xff << (m.count % 8)
  padded.fill(0xff, bytes.length)
  const back = ExtentBitmap.fromBytes(m.count, padded)
  assert.ok(back.equals(b), 'fromBytes(toBytes()) equals the original, bits past count dropped')
  assert.equal(back.countSet(), m.bits.filter(Boolean).length)
  // No bit past count in the last word (the invariant word-wide operations rely on).
  const tail = m.count & 31
  if (tail !== 0) assert.equal(b.words[b.words.length - 1] >>> tail, 0, 'bits past count stay zero')
}

describe('ExtentBitmap against a boolean-array model', () => {
  test('random op sequences agree with the model on every query', () => {
    fc.assert(
      fc.property(scenario, ({count, ops, queries}) => {
        const b = new ExtentBitmap(count)
        const m = new Model(count)
        for (const o of ops) {
          apply(b, m, o)
          for (let i = 0; i < count; i++) if (b.get(i) !== m.bits[i]) assert.fail(`after ${JSON.stringify({...o, bits: undefined})}: get(${i}) is ${b.get(i)}`)
        }
        compare(b, m, queries)
        const eq = new ExtentBitmap(count)
        m.bits.forEach((v, i) => v && eq.set(i))
        assert.ok(eq.equals(b) && b.equals(eq), 'equals() a bitmap built bit by bit')
        const flip = count - 1 // the last bit, next to the tail
        if (m.bits[flip]) eq.clear(flip)
        else eq.set(flip)
        assert.equal(eq.equals(b), false, 'equals() sees one differing bit')
        assert.equal(new ExtentBitmap(count + 1).equals(new ExtentBitmap(count)), false, 'equals() needs the same count')
        // clone/copyFrom/setAll/clearAll keep agreeing too
        const c = b.clone()
        assert.ok(c.equals(b))
        c.setAll()
        assert.equal(c.countSet(), count)
        assert.equal(c.nextClear(0), -1)
        assert.deepEqual([...c.runs()], [[0, count]])
        c.copyFrom(b)
        assert.ok(c.equals(b))
        c.clearAll()
        assert.ok(c.isEmpty())
        assert.equal(c.nextSet(0), -1)
      }),
      {numRuns: 500},
    )
  })

  test('ranges crossing word boundaries, count not a multiple of 32', () => {
    const b = new ExtentBitmap(100)
    const m = new Model(100)
    apply(b, m, {op: 'setRange', a: 30, b: 70})
    apply(b, m, {op: 'clearRange', a: 31, b: 33})
    apply(b, m, {op: 'setRange', a: 95, b: 100})
    apply(b, m, {op: 'clear', a: 64})
    compare(b, m, [
      [0, 100],
      [30, 34],
      [63, 65],
      [96, 100],
      [32, 32],
      [100, 100],
    ])
    assert.deepEqual([...b.runs()], [[30, 31], [33, 64], [65, 70], [95, 100]])
    assert.deepEqual([...b.runs(40, 66)], [[40, 64], [65, 66]])
  })

  test('setAll leaves no bit past count; out-of-range arguments throw RangeError', () => {
    for (const count of [1, 31, 33, 64, 77]) {
      const b = new ExtentBitmap(count)
      b.setAll()
      assert.equal(b.countSet(), count)
      assert.equal(b.nextSet(count), -1)
      const bytes = b.toBytes()
      if (count % 8) assert.equal(bytes[bytes.length - 1] >> count % 8, 0, 'no bits past count in toBytes')
      assert.throws(() => b.get(count), RangeError)
      assert.throws(() => b.set(-1), RangeError)
      assert.throws(() => b.setRange(0, count + 1), RangeError)
      assert.throws(() => b.clearRange(2, 1), RangeError)
      assert.throws(() => b.or(new ExtentBitmap(count + 1)), RangeError)
      assert.throws(() => b.orRange(new ExtentBitmap(count + 1), 0, 1), RangeError)
      assert.throws(() => b.andNotRange(new ExtentBitmap(count), 0, count + 1), RangeError)
    }
    assert.throws(() => new ExtentBitmap(-1), RangeError)
    assert.throws(() => new ExtentBitmap(1.5), RangeError)
    assert.throws(() => ExtentBitmap.fromBytes(17, new Uint8Array(2)), RangeError)
    const b = new ExtentBitmap(40)
    assert.throws(() => b.nextSet(-1), RangeError)
    assert.throws(() => b.nextClear(0.5), RangeError)
    assert.equal(b.nextSet(40), -1, 'from == count: none')
    assert.equal(b.nextClear(41), -1, 'from past count: none')
    assert.throws(() => [...b.runs(0, 41)], RangeError)
    assert.throws(() => b.anySet(-1, 3), RangeError)
    assert.throws(() => b.countSet(0, 41), RangeError)
    const empty = new ExtentBitmap(0)
    assert.equal(empty.countSet(), 0)
    assert.equal(empty.nextSet(0), -1)
    assert.deepEqual([...empty.runs()], [])
  })
})

describe('crc32c', () => {
  test('the standard check value: crc32c("123456789") === 0xE3069283', () => {
    assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283)
  })
  test('more known vectors (RFC 3720 B.4 iSCSI test patterns)', () => {
    assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa, '32 bytes of zeros')
    assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43, '32 bytes of 0xff')
    assert.equal(crc32c(Uint8Array.from({length: 32}, (_, i) => i)), 0x46dd794e, '32 incrementing bytes')
    assert.equal(crc32c(Uint8Array.from({length: 32}, (_, i) => 31 - i)), 0x113fdb5c, '32 decrementing bytes')
  })
  test('eight bytes at a time agrees with the bit-at-a-time definition, any length and seed', () => {
    const reference = (data: Uint8Array, seed: number): number => {
      let c = ~seed >>> 0
      for (const byte of data) {
        c ^= byte
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
      }
      return ~c >>> 0
    }
    fc.assert(
      fc.property(fc.uint8Array({maxLength: 80}), fc.nat({max: 0xffffffff}), fc.nat({max: 7}), (data, seed, skip) => {
        // Views that start inside a buffer too (byteOffset not 0).
        const view = data.subarray(Math.min(skip, data.length))
        assert.equal(crc32c(view, seed), reference(view, seed))
      }),
      {numRuns: 500},
    )
  })
  test('empty input is 0, and a seed chains calls', () => {
    assert.equal(crc32c(new Uint8Array(0)), 0)
    const data = new TextEncoder().encode('123456789')
    assert.equal(crc32c(data.subarray(4), crc32c(data.subarray(0, 4))), 0xe3069283)
  })
})
