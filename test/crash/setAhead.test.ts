/**
 * Targeted power-loss tests for the ordering rules a sequential host cannot reach: several
 * host requests in flight at once (NBD allows many). Each holds one fs operation mid-flight
 * with MemoryFs.onOp, and checks every crash state of that instant.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import {mapFileName, protectedMapFile} from '../../src/group/CloneGroup.js'
import {enumerateCrashStates, type MemoryFs} from '../support/MemoryFs.js'
import {PersistentMap} from '../../src/map/PersistentMap.js'
import {buildGroup, clonePath, contextOn, fillPattern, gate, openGroup, SRC} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 16
const SIZE = X * EXTENTS
const base = fillPattern(EXTENTS, X, (e) => 0x40 + e)

async function ticks(n = 50): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r))
}

async function durableDelta(fs: MemoryFs, clone: string): Promise<boolean[]> {
  const m = await PersistentMap.open(fs, `/state/groups/g/${mapFileName(clone)}`, {kind: 'delta', extentSize: X, volumeSize: SIZE})
  const out = Array.from({length: EXTENTS}, (_, e) => m.bits.get(e))
  await m.close()
  return out
}

/** INV-1 for clone k on every crash state of fs now. Returns the number of states checked. */
async function checkInv1(fs: MemoryFs, clone: string, label: string): Promise<number> {
  let n = 0
  for (const s of enumerateCrashStates(fs, {subsets: 16, seed: 5, torn: true})) {
    const c = fs.crash(s.choice)
    const D = await durableDelta(c, clone)
    const src = c.contentOf(SRC)
    const k = c.contentOf(clonePath(clone))
    for (let e = 0; e < EXTENTS; e++)
      if (src.compare(k, e * X, (e + 1) * X, e * X, (e + 1) * X) !== 0) assert.ok(D[e], `[${label} ${s.label}] INV-1: extent ${e} differs from clone ${clone}, D bit not durable`)
    n++
  }
  return n
}

describe('set ahead under concurrent host writes (recipe 1, INV-1)', () => {
  test('given a write to extent 2 waiting for its D[k] page; when a second write to extent 2 arrives, then it too waits until the bit is durable', async () => {
    const m = await buildGroup({extents: EXTENTS, source: base, clones: ['k']})
    const g = await openGroup(m)
    const host = new HostIO(g)
    const hold = gate()
    let held = false
    const srcWritesWhileHeld: number[] = []
    const mapFile = `/state/groups/g/${mapFileName('k')}`
    m.fs.onOp = async (op) => {
      if (op.kind === 'write' && op.path === SRC && held) srcWritesWhileHeld.push(op.offset ?? -1)
      if (!held && op.kind === 'write' && op.path === mapFile) {
        held = true
        await hold.promise
      }
    }
    const w1 = host.write(2 * X, Buffer.alloc(100, 1), false)
    for (let i = 0; !held && i < 1000; i++) await ticks(1)
    assert.ok(held, 'the first write reached its map page write')
    const w2 = host.write(2 * X + 200, Buffer.alloc(100, 2), false)
    await ticks()
    const states = await checkInv1(m.fs, 'k', 'second write while the page is held')
    assert.deepEqual(srcWritesWhileHeld, [], 'a source data write was issued before D[k] for its extent was durable')
    hold.release()
    await Promise.all([w1, w2])
    m.fs.onOp = undefined
    await checkInv1(m.fs, 'k', 'after both writes')
    assert.ok(states >= 1)
    await g.close()
  })

  test('given a write to extent 2 waiting for its D[k] datasync; when a second write to extent 2 arrives, then it waits for the datasync', async () => {
    const m = await buildGroup({extents: EXTENTS, source: base, clones: ['k']})
    const g = await openGroup(m)
    const host = new HostIO(g)
    const hold = gate()
    let held = false
    const mapFile = `/state/groups/g/${mapFileName('k')}`
    let srcWritesWhileHeld = 0
    m.fs.onOp = async (op) => {
      if (op.kind === 'write' && op.path === SRC && held) srcWritesWhileHeld++
      if (!held && op.kind === 'datasync' && op.path === mapFile) {
        held = true
        await hold.promise
      }
    }
    const w1 = host.write(2 * X, Buffer.alloc(100, 1), false)
    for (let i = 0; !held && i < 1000; i++) await ticks(1)
    assert.ok(held)
    const w2 = host.write(2 * X + 200, Buffer.alloc(100, 2), false)
    await ticks()
    await checkInv1(m.fs, 'k', 'second write while the datasync is held')
    assert.equal(srcWritesWhileHeld, 0, 'a source data write was issued before D[k] for its extent was durable')
    hold.release()
    await Promise.all([w1, w2])
    m.fs.onOp = undefined
    await g.close()
  })
})

describe('protect behind under concurrent host writes (recipe 3, INV-2)', () => {
  test('given a checkpoint flushing the source; when a host write lands meanwhile, then its P bit is not made durable by that checkpoint', async () => {
    const m = await buildGroup({extents: EXTENTS, source: base, clones: ['c']})
    {
      const g0 = await openGroup(m)
      const h0 = new HostIO(g0)
      for (const e of [3, 4, 5]) await h0.write(e * X, Buffer.alloc(X, 0xee), false)
      await h0.flush()
      await g0.close()
    }
    const g = await openGroup(m, ['c'])
    const host = new HostIO(g)
    const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'test', tuning: {chunkBytes: X, parallel: 1}}))
    host.restore = s
    // A first write to extent 9 (not in D[c]) and a flush whose source datasync is held.
    await host.write(9 * X, Buffer.alloc(X, 9), false)
    const hold = gate()
    let held = false
    m.fs.onOp = async (op) => {
      if (!held && op.kind === 'datasync' && op.path === SRC) {
        held = true
        await hold.promise
      }
    }
    const flush = host.flush()
    for (let i = 0; !held && i < 1000; i++) await ticks(1)
    assert.ok(held)
    // A whole-extent write to 4 (in D[c]): no COD, P[4] set in memory, data written.
    await host.write(4 * X, Buffer.alloc(X, 0x44), false)
    hold.release()
    await flush
    m.fs.onOp = undefined
    // Whatever the crash now, a durable P bit must sit over restored or host data only.
    for (const st of enumerateCrashStates(m.fs, {subsets: 16, seed: 2, torn: true})) {
      const c = m.fs.crash(st.choice)
      const rec = await contextOn(c).store.load('g')
      const P = await PersistentMap.open(c, `/state/groups/g/${protectedMapFile}`, {kind: 'protected', extentSize: X, volumeSize: SIZE, operationId: rec.operation?.id})
      const src = c.contentOf(SRC)
      for (let e = 0; e < EXTENTS; e++) if (P.bits.get(e)) assert.ok(!src.subarray(e * X, (e + 1) * X).includes(0xee), `[${st.label}] INV-2: P[${e}] durable over pre-restore data`)
      await P.close()
    }
    assert.equal(await s.run(), true)
    await host.gate.exclusive(() => s.finish())
    assert.ok((await g.src.read(4 * X, X)).every((b) => b === 0x44))
    await g.close()
  })
})
