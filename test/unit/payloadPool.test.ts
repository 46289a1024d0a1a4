import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {ByteQueue} from '../../src/nbd/ByteQueue.js'
import {PayloadPool} from '../../src/nbd/PayloadPool.js'

describe('PayloadPool (WRITE payload buffers)', () => {
  test('given sizes, then buffers of exactly that size from power-of-two classes of at least 64 KiB', () => {
    const pool = new PayloadPool()
    for (const n of [1, 4096, 65_536, 65_537, 1 << 20, (1 << 20) + 1, 32 << 20]) {
      const b = pool.get(n)
      assert.equal(b.length, n)
      assert.equal(b.buffer.byteLength, PayloadPool.classOf(n))
      assert.ok(PayloadPool.classOf(n) >= Math.max(n, 65_536))
    }
  })

  test('a buffer given back is handed out again for the same class, and never more than `keep` are kept', () => {
    const pool = new PayloadPool(2)
    const a = pool.get(1 << 20)
    pool.put(a)
    const b = pool.get((1 << 20) - 100)
    assert.equal(b.buffer, a.buffer, 'reused')
    const c = pool.get(1 << 20)
    assert.notEqual(c.buffer, a.buffer, 'in use: not handed out twice')
    const extra = [pool.get(1 << 20), pool.get(1 << 20), pool.get(1 << 20)]
    for (const x of [b, c, ...extra]) pool.put(x)
    const again = [pool.get(1 << 20), pool.get(1 << 20), pool.get(1 << 20)]
    assert.equal(new Set([b, c, ...extra].map((x) => x.buffer)).size, 5)
    assert.equal(again.filter((x) => [b, c, ...extra].some((y) => y.buffer === x.buffer)).length, 2, 'only two were kept')
  })

  test('given kept buffers, then clear() drops them all: the next get() makes a new one', () => {
    const pool = new PayloadPool()
    const a = pool.get(1 << 20)
    pool.put(a)
    assert.equal(pool.kept, 1 << 20)
    pool.clear()
    assert.equal(pool.kept, 0)
    assert.notEqual(pool.get(1 << 20).buffer, a.buffer)
  })

  test('given a burst of 32 MiB writes, then at most 64 MiB of free buffers stay kept afterwards', () => {
    const pool = new PayloadPool()
    const burst = Array.from({length: 8}, () => pool.get(32 << 20))
    for (const b of burst) pool.put(b)
    assert.equal(pool.kept, 64 << 20, 'two of eight kept, the rest left to the garbage collector')
    const again = [pool.get(32 << 20), pool.get(32 << 20), pool.get(32 << 20)]
    assert.equal(again.filter((x) => burst.some((y) => y.buffer === x.buffer)).length, 2)
    assert.equal(pool.kept, 0)
  })

  test('a buffer not from the pool (a view into a socket chunk) is ignored on put', () => {
    const pool = new PayloadPool()
    const chunk = Buffer.alloc(200_000)
    pool.put(chunk.subarray(10, 70_000))
    const b = pool.get(70_000)
    assert.notEqual(b.buffer, chunk.buffer)
  })

  test('ByteQueue.take copies into the allocator only when the bytes span chunks', () => {
    const q = new ByteQueue()
    q.push(Buffer.alloc(100, 1))
    q.push(Buffer.alloc(100, 2))
    let calls = 0
    const alloc = (n: number): Buffer => {
      calls++
      return Buffer.alloc(n)
    }
    const view = q.take(50, alloc)
    assert.equal(calls, 0, 'within one chunk: a view')
    assert.ok(view.equals(Buffer.alloc(50, 1)))
    const spanning = q.take(100, alloc)
    assert.equal(calls, 1)
    assert.ok(spanning.equals(Buffer.concat([Buffer.alloc(50, 1), Buffer.alloc(50, 2)])))
  })
})
