/**
 * A forward sync under sustained host writes converges (issue 14): host writes to extents
 * already copied are mirrored to the synchronizing clone behind write-intent bits, so one
 * pass plus the collided residue copies everything; write-intent bits of hot extents stay
 * set (no map commit per write) and clear lazily once quiet.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {HostGate} from '../../src/engine/HostGate.js'
import {HostIO, HostIoError} from '../../src/engine/HostIO.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {addClone, fractureClones} from '../../src/group/GroupAdmin.js'
import {VolumeIoError} from '../../src/errors/errors.js'
import {mulberry32} from '../../src/io/prng.js'
import type {Volume} from '../../src/volume/Volume.js'
import {buildGroup, clonePath, fillPattern, openGroup, SRC, setBits} from '../helpers/memGroup.js'

const X = 4096

/**
 * The clone's writes take a turn of the event loop (I/O does): copies and mirrored writes
 * then interleave with host writers instead of running in one burst of microtasks.
 */
function slowWrites(g: CloneGroup, clone: string): void {
  const k = g.member(clone)
  const vol = k.vol
  k.volume = new Proxy(vol, {
    get: (t, key: keyof typeof vol) =>
      key === 'write'
        ? async (...a: Parameters<typeof vol.write>) => {
            await new Promise((r) => setImmediate(r))
            return t.write(...a)
          }
        : typeof t[key] === 'function'
          ? (t[key] as (...x: unknown[]) => unknown).bind(t)
          : t[key],
  })
}

describe('a forward sync under a continuous writer', () => {
  test('given a fresh clone and 8 writers writing all the time, when it is synced, then the sync finishes while they write, copies at most 1.5x the volume, progress never goes back, and the clone equals the source', async () => {
    const EXTENTS = 256
    const SIZE = EXTENTS * X
    const m = await buildGroup({extents: EXTENTS, source: fillPattern(EXTENTS, X, (e) => 1 + (e % 250)), clones: []})
    const g = await openGroup(m)
    await addClone(g, {clone: 'k', path: clonePath('k'), create: true})
    slowWrites(g, 'k')
    const host = new HostIO(g)
    const sync = await ForwardSync.start(g, {clone: 'k', command: 'test', gate: host.gate, tuning: {chunkBytes: X, parallel: 2}})
    assert.ok(sync instanceof ForwardSync)

    // 8 writers, each a write per turn of the event loop, against 2 chunks of one extent in
    // flight: ~4 host writes per extent copied. Each owns an eighth of the volume (no two
    // writes in flight overlap) and writes 1 B .. 2 extents, some across an extent boundary.
    // They stop a while after the sync finished, or at the cap.
    const CAP = 40 * EXTENTS
    const rand = mulberry32(14)
    let writes = 0
    let syncDone = false
    let writesAtDone = -1
    let lastDone = 0
    let wentBack = false
    const writer = async (i: number): Promise<void> => {
      const quarter = SIZE / 8
      while (writes < CAP && !(syncDone && writes - writesAtDone >= 400)) {
        const off = i * quarter + Math.floor(rand() * (quarter - 1))
        const len = Math.min(i * quarter + quarter - off, 1 + Math.floor(rand() * 2 * X))
        await host.write(off, Buffer.alloc(len, 1 + Math.floor(rand() * 250)), false)
        writes++
        await new Promise((r) => setImmediate(r))
        const p = sync.progress
        const done = p.totalExtents - p.remainingExtents
        if (done < lastDone) wentBack = true
        lastDone = done
      }
    }
    const writers = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => writer(i))
    const summary = await sync.run()
    syncDone = true
    writesAtDone = writes
    await Promise.all(writers)

    assert.equal(summary.completed, true)
    assert.ok(writesAtDone < CAP, `the sync finished only once the writers stopped (${writesAtDone} writes)`)
    assert.ok(writesAtDone >= 2 * EXTENTS, `the writers wrote ${writesAtDone} times during the sync: not a sustained load`)
    assert.ok(summary.copiedBytes <= 1.5 * SIZE, `copied ${summary.copiedBytes} bytes for a ${SIZE}-byte volume (${summary.collisions} collisions)`)
    assert.equal(wentBack, false, 'progress (done extents) went back')
    assert.equal(g.member('k').state, 'synchronized')

    await host.flush()
    const src = await g.src.read(0, SIZE)
    assert.ok(src.equals(await g.member('k').vol.read(0, SIZE)), 'the clone differs from the source')
    await g.close()
    // Closed: every write-intent bit was idle and is durably clear; INV-1 holds trivially.
    const again = await CloneGroup.open(m.ctx, 'g', {writable: false})
    assert.deepEqual(setBits(again.member('k').map.bits), [])
    const durable = m.fs.crash({kind: 'durable'})
    assert.ok(durable.contentOf(SRC).subarray(0, SIZE).equals(durable.contentOf(clonePath('k')).subarray(0, SIZE)))
    await again.close()
  })
})

describe('a forward sync under writes to one hot extent', () => {
  test('given 4 writers writing extent 10 all the time, when the clone is synced, then the sync finishes while they write: the second copy of extent 10 holds new writes back until it is done', async () => {
    const EXTENTS = 32
    const SIZE = EXTENTS * X
    const m = await buildGroup({extents: EXTENTS, source: fillPattern(EXTENTS, X, (e) => 1 + e), clones: []})
    const g = await openGroup(m)
    await addClone(g, {clone: 'k', path: clonePath('k'), create: true})
    slowWrites(g, 'k')
    const host = new HostIO(g)
    const sync = await ForwardSync.start(g, {clone: 'k', command: 'test', gate: host.gate, tuning: {chunkBytes: X, parallel: 2}})
    assert.ok(sync instanceof ForwardSync)
    const CAP = 20_000
    let writes = 0
    let syncDone = false
    // Each writer its own 1 KiB of extent 10 (no two writes in flight overlap).
    const writer = async (i: number): Promise<void> => {
      for (let n = 0; writes < CAP && !syncDone; n++) {
        await host.write(10 * X + i * 1024, Buffer.alloc(1024, 1 + ((n + i) % 250)), false)
        writes++
        await new Promise((r) => setImmediate(r))
      }
    }
    const writers = [0, 1, 2, 3].map((i) => writer(i))
    const summary = await sync.run()
    syncDone = true
    const atDone = writes
    await Promise.all(writers)
    assert.equal(summary.completed, true)
    assert.ok(atDone < CAP, `the sync finished only once the writers stopped (${summary.collisions} collisions)`)
    assert.ok(summary.copiedBytes <= 1.5 * SIZE, `copied ${summary.copiedBytes} bytes`)
    await host.flush()
    assert.ok((await g.src.read(0, SIZE)).equals(await g.member('k').vol.read(0, SIZE)), 'the clone differs from the source')
    // A later sync with no writer reports its own collisions (none), not the group's so far.
    assert.ok(summary.collisions > 0)
    await fractureClones(g, ['k'])
    await host.write(0, Buffer.alloc(X, 0x77), false)
    const again = await ForwardSync.start(g, {clone: 'k', command: 'test', gate: host.gate})
    assert.ok(again instanceof ForwardSync)
    assert.equal((await again.run()).collisions, 0)
    await g.close()
  })
})

describe('write-intent bits of a mirrored clone', () => {
  test('given a synchronized clone, when an extent is written again after a checkpoint, then that write pays no map commit; once quiet its bit clears durably', async () => {
    const m = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    g.intentQuietMs = 0
    const c = g.member('c')
    const host = new HostIO(g, {intentRegionBytes: X})
    await host.write(2 * X, Buffer.alloc(512, 0x22), false)
    await host.flush()
    const commits = c.map.commits
    await host.write(2 * X + 512, Buffer.alloc(512, 0x23), false)
    assert.equal(c.map.commits, commits, 'a hot extent paid a map commit again')
    assert.deepEqual(setBits(c.map.bits), [2])
    // Two checkpoints with no write to extent 2 in between: quiet, cleared, durably.
    await host.flush()
    await host.flush()
    assert.deepEqual(setBits(c.map.bits), [])
    const after = await CloneGroup.open({...m.ctx, fs: m.fs.crash({kind: 'durable'})}, 'g', {writable: false, volumes: false})
    assert.deepEqual(setBits(after.member('c').map.bits), [])
    await after.close()
    await g.close()
  })

  test('given a synchronized clone with no bit set, when 4 extents of one 8-extent region are written, then only the first write pays a map commit; a crash then recopies that region, nothing else', async () => {
    const m = await buildGroup({extents: 16, source: fillPattern(16, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    const c = g.member('c')
    const host = new HostIO(g, {intentRegionBytes: 8 * X})
    const commits = c.map.commits
    await host.write(9 * X, Buffer.alloc(512, 0x09), false)
    assert.equal(c.map.commits, commits + 1)
    for (const e of [8, 12, 15]) await host.write(e * X, Buffer.alloc(512, e), false)
    assert.equal(c.map.commits, commits + 1, 'a write in a region already committed paid a commit')
    // Durably set: the region written, not the other one.
    const after = await CloneGroup.open({...m.ctx, fs: m.fs.crash({kind: 'durable'})}, 'g', {writable: false, volumes: false})
    assert.deepEqual(setBits(after.member('c').map.bits), [8, 9, 10, 11, 12, 13, 14, 15])
    await after.close()
    // Equal data: none of it is left to copy.
    assert.equal(c.dirtyCount(), 0)
    await g.close()
  })

  test('given a synchronized clone whose map still marks extent 3 (a crash left it), when a host writes 512 bytes into extent 3, then the bit stays set: the rest of the extent may still differ', async () => {
    const m = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    g.intentQuietMs = 0
    const c = g.member('c')
    await c.map.setDurable(3, 4)
    const host = new HostIO(g)
    await host.write(3 * X, Buffer.alloc(512, 0x33), false)
    await host.flush()
    await host.flush()
    assert.deepEqual(setBits(c.map.bits), [3])
    await g.close()
    const after = await CloneGroup.open(m.ctx, 'g', {writable: false, volumes: false})
    assert.deepEqual(setBits(after.member('c').map.bits), [3])
    await after.close()
  })
})

describe('HostGate.tryEnter (the host write path enters without an await)', () => {
  test('given an open gate, then a writer enters at once and an exclusive step waits for it to leave; while the step runs, tryEnter refuses and enter() waits for the step', async () => {
    const gate = new HostGate()
    assert.equal(gate.tryEnter(), true)
    assert.equal(gate.inflight, 1)
    let stepRan = false
    let inStep = -1
    let refusedInStep: boolean | undefined
    let release!: () => void
    const stepHeld = new Promise<void>((r) => {
      release = r
    })
    const step = gate.exclusive(async () => {
      stepRan = true
      inStep = gate.inflight
      refusedInStep = !gate.tryEnter()
      await stepHeld
    })
    for (let i = 0; i < 10; i++) await Promise.resolve()
    assert.equal(stepRan, false, 'the step waits for the writer that entered')
    gate.leave()
    // A writer arriving now waits at the gate until the step ends.
    let entered = false
    const late = gate.enter().then(() => {
      entered = true
    })
    while (!stepRan) await Promise.resolve()
    assert.equal(inStep, 0)
    assert.equal(refusedInStep, true, 'no writer enters while the step runs')
    for (let i = 0; i < 10; i++) await Promise.resolve()
    assert.equal(entered, false)
    release()
    await step
    await late
    assert.equal(entered, true)
    assert.equal(gate.inflight, 1)
    gate.leave()
    assert.equal(gate.tryEnter(), true, 'open again')
    gate.leave()
  })
})

describe('a mirrored host write done synchronously (Volume.writeNow)', () => {
  /** Give a volume a writeNow that records (and, with `fail`, throws) instead of writing. */
  function withWriteNow(v: Volume, fail?: () => boolean): {now: Array<[number, number]>; asyncWrites: number; vol: Volume} {
    const rec = {now: [] as Array<[number, number]>, asyncWrites: 0, vol: v}
    rec.vol = new Proxy(v, {
      get: (t, key: keyof Volume) => {
        if (key === 'writeNow')
          return (pos: number, data: Uint8Array): boolean => {
            if (fail?.()) throw new VolumeIoError(`I/O error writing ${t.path} at offset ${pos}`, 'EIO')
            rec.now.push([pos, data.byteLength])
            return true
          }
        if (key === 'write')
          return (pos: number, data: Uint8Array): Promise<void> => {
            rec.asyncWrites++
            return t.write(pos, data)
          }
        const x = t[key]
        return typeof x === 'function' ? (x as (...a: unknown[]) => unknown).bind(t) : x
      },
    })
    return rec
  }

  test('given a source and a synchronized clone that can write synchronously, when a host writes, then each volume is written once by writeNow and none by write()', async () => {
    const m = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    const src = withWriteNow(g.src)
    g.source = src.vol
    const c = withWriteNow(g.member('c').vol)
    g.member('c').volume = c.vol
    const host = new HostIO(g)
    await host.write(2 * X, Buffer.alloc(X, 0x22), false)
    assert.deepEqual(src.now, [[2 * X, X]])
    assert.deepEqual(c.now, [[2 * X, X]])
    assert.equal(src.asyncWrites + c.asyncWrites, 0)
    assert.equal(host.mirroredWrites, 1)
    assert.equal(g.member('c').state, 'synchronized')
    assert.ok(g.member('c').map.get(2), 'write-intent set ahead (recipe 1)')
    await g.close({save: false})
  })

  test('given a clone whose synchronous write throws, then the host write succeeds and the clone is fractured with its bit set; given the source\'s throws, then the host write fails EIO and the clone was still written', async () => {
    const m = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    let srcFails = false
    let cloneFails = true
    const src = withWriteNow(g.src, () => srcFails)
    g.source = src.vol
    const c = withWriteNow(g.member('c').vol, () => cloneFails)
    g.member('c').volume = c.vol
    const failures: string[] = []
    const host = new HostIO(g, {onMirrorFailure: (clone) => failures.push(clone)})
    await host.write(3 * X, Buffer.alloc(X, 0x33), false)
    assert.deepEqual(src.now, [[3 * X, X]])
    assert.equal(g.member('c').state, 'fractured')
    assert.deepEqual(failures, ['c'])
    assert.ok(g.member('c').map.get(3), 'the missed write stays recorded in D')
    assert.equal(g.member('c').needsCopy(3), true, 'not write-intent: a copy is due')

    const m2 = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g2 = await openGroup(m2)
    srcFails = true
    cloneFails = false
    const src2 = withWriteNow(g2.src, () => srcFails)
    g2.source = src2.vol
    const c2 = withWriteNow(g2.member('c').vol, () => cloneFails)
    g2.member('c').volume = c2.vol
    const host2 = new HostIO(g2)
    await assert.rejects(host2.write(4 * X, Buffer.alloc(X, 0x44), false), (e: Error) => e instanceof HostIoError && e.errno === 'EIO' && e.message.includes(`offset ${4 * X}`))
    assert.deepEqual(c2.now, [[4 * X, X]], 'the clone was written as before (writes are issued together)')
    assert.equal(g2.member('c').state, 'synchronized')
    assert.equal(g2.member('c').needsCopy(4), true, 'source and clone may differ there: no longer write-intent, a copy is due')
    await g.close({save: false})
    await g2.close({save: false})
  })
})
