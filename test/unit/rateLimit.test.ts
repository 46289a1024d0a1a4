/**
 * --rate and host I/O: a throttled sync engine must not hold extents in the scoreboard while
 * it waits for the limiter, or a host request needing them waits up to chunk/rate behind it.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {HostIO} from '../../src/engine/HostIO.js'
import {RateLimiter} from '../../src/engine/RateLimiter.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {buildGroup, fillPattern, openGroup} from '../helpers/memGroup.js'
import {waitFor} from '../helpers/waitFor.js'

const X = 4096
const EXTENTS = 64
const cloneByte = (e: number): number => 0x40 + (e % 0x80)

/** A group whose source differs from clone c in every extent (written through the host path). */
async function allDamaged(): Promise<Awaited<ReturnType<typeof buildGroup>>> {
  const m = await buildGroup({extents: EXTENTS, source: fillPattern(EXTENTS, X, cloneByte), clones: ['c']})
  const g = await openGroup(m)
  const host = new HostIO(g)
  for (let e = 0; e < EXTENTS; e++) await host.write(e * X, Buffer.alloc(X, 0xee), false)
  await host.flush()
  await g.close()
  return m
}

function within<T>(ms: number, p: Promise<T>): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`still waiting after ${ms} ms`)), ms))])
}

describe('rate-limited restore and host reads', () => {
  test('given a restore at 16 KiB/s (the whole map is 64 s of tokens); when a host reads an extent not yet copied, then COD serves it at once, without waiting for the limiter', async () => {
    const m = await allDamaged()
    const g = await openGroup(m, ['c'])
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, rate: 16 * 1024, command: 'test'}))
    host.restore = s
    // Seen from the limiter: the engine is waiting for tokens (the bucket starts empty).
    let waiting = 0
    const take = s.limiter.take.bind(s.limiter)
    s.limiter.take = async (bytes, shouldStop) => {
      waiting++
      try {
        await take(bytes, shouldStop)
      } finally {
        waiting--
      }
    }
    const run = s.run()
    await waitFor(() => waiting > 0, 'the sync engine to wait for tokens')
    assert.equal(g.scoreboard.size, 0, 'while the engine waits for tokens it claims nothing')

    const t0 = performance.now()
    const data = await within(2000, host.read(40 * X, X))
    const ms = performance.now() - t0
    assert.ok(ms < 500, `the read took ${ms.toFixed(0)} ms`)
    assert.ok(data.every((b) => b === cloneByte(40)), 'the read returns the clone data COD brought')
    assert.equal(s.cod.copies, 1, 'extent 40 was copied on demand, not by the throttled engine')

    s.stop()
    assert.equal(await run, false)
    await s.suspend()
    await g.close()
  })

  test('given a restore at 1 MiB/s; when it runs to the end, then it takes about size/rate and the source equals the clone', async () => {
    const m = await allDamaged()
    const g = await openGroup(m, ['c'])
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, rate: 1024 * 1024, command: 'test'}))
    host.restore = s
    const t0 = performance.now()
    assert.equal(await s.run(), true)
    const seconds = (performance.now() - t0) / 1000
    // 256 KiB at 1 MiB/s: 0.25 s of tokens (the bucket starts empty).
    assert.ok(seconds > 0.15 && seconds < 2, `took ${seconds.toFixed(2)} s`)
    await host.gate.exclusive(() => s.finish())
    assert.ok((await g.src.read(0, EXTENTS * X)).equals(fillPattern(EXTENTS, X, cloneByte)))
    await g.close()
  })
})

describe('RateLimiter', () => {
  test('given tokens taken and refunded, when the same bytes are taken again, then it does not wait', async () => {
    const l = new RateLimiter(100_000)
    await l.take(10_000)
    l.refund(10_000)
    const t0 = performance.now()
    await l.take(10_000)
    assert.ok(performance.now() - t0 < 50)
  })
})
