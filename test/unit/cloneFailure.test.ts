/**
 * A clone that fails — a remote clone that vanishes, a disk that errors — on the real engine
 * over an in-memory file system: the host is never failed for a clone's fault, the clone is
 * taken out of mirroring with its reason, and after power loss every extent where source and
 * clone differ is still marked in its delta map (INV-1). A restore from a remote clone that
 * stops answering pauses (COD reads fail cleanly) and goes on when it is back.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {RemoteError} from '../../src/errors/errors.js'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import type {CloneGroup} from '../../src/group/CloneGroup.js'
import {CloneGroup as Group} from '../../src/group/CloneGroup.js'
import type {MemoryFs} from '../support/MemoryFs.js'
import type {Fingerprint, Volume, VolumeExtent, VolumeKind} from '../../src/volume/Volume.js'
import {buildGroup, clonePath, contextOn, fillPattern, openGroup, setBits, SRC} from '../helpers/memGroup.js'

const X = 4096

/** A volume whose reads, writes or flushes fail on demand, as a vanished remote's would. */
class FlakyVolume implements Volume {
  failReads = false
  failWrites = false
  failFlush = false
  reads = 0
  constructor(
    readonly inner: Volume,
    readonly kind: VolumeKind = inner.kind,
  ) {}

  get path(): string {
    return this.inner.path
  }

  get size(): number {
    return this.inner.size
  }

  get readOnly(): boolean {
    return this.inner.readOnly
  }

  get knownZero(): boolean {
    return this.inner.knownZero
  }

  set knownZero(v: boolean) {
    this.inner.knownZero = v
  }

  private lost(what: string): RemoteError {
    return new RemoteError(`nbd://backup.example/c: connection lost during ${what} (ECONNRESET)`, 'lost', 'check that the NBD server is running')
  }

  read(position: number, length: number, into?: Buffer): Promise<Buffer> {
    this.reads++
    return this.failReads ? Promise.reject(this.lost('a read')) : this.inner.read(position, length, into)
  }

  write(position: number, data: Uint8Array): Promise<void> {
    return this.failWrites ? Promise.reject(this.lost('a write')) : this.inner.write(position, data)
  }

  writeZeroes(position: number, length: number, opts?: {punch?: boolean}): Promise<void> {
    return this.failWrites ? Promise.reject(this.lost('a write')) : this.inner.writeZeroes(position, length, opts)
  }

  trim(position: number, length: number): Promise<void> {
    return this.failWrites ? Promise.reject(this.lost('a trim')) : this.inner.trim(position, length)
  }

  extents(position: number, length: number): Promise<VolumeExtent[]> {
    return this.failReads ? Promise.reject(this.lost('a block status')) : this.inner.extents(position, length)
  }

  flush(): Promise<void> {
    return this.failFlush ? Promise.reject(this.lost('a flush')) : this.inner.flush()
  }

  fingerprint(): Promise<Fingerprint> {
    return this.inner.fingerprint()
  }

  close(): Promise<void> {
    return this.inner.close()
  }
}

function flaky(g: CloneGroup, clone: string, kind?: VolumeKind): FlakyVolume {
  const m = g.member(clone)
  const v = new FlakyVolume(m.vol, kind)
  m.volume = v
  return v
}

/** After power loss: every extent where the durable source and clone differ has its D bit durably set. */
async function assertInv1(fs: MemoryFs, clone: string, extents: number): Promise<void> {
  const after = fs.crash({kind: 'durable'})
  const src = after.contentOf(SRC)
  const cl = after.contentOf(clonePath(clone))
  const g = await Group.open(contextOn(after), 'g', {writable: false, volumes: false})
  try {
    const bits = g.member(clone).map.bits
    for (let e = 0; e < extents; e++) {
      const differs = !src.subarray(e * X, (e + 1) * X).equals(cl.subarray(e * X, (e + 1) * X))
      assert.ok(!differs || bits.get(e), `INV-1: extent ${e} differs after power loss but D[${clone}] does not mark it`)
    }
  } finally {
    await g.close()
  }
}

describe('a mirrored clone that fails', () => {
  test('given a synchronized clone whose writes fail, when a host writes, then the write succeeds, the clone is fractured with its reason, and the extent is marked', async () => {
    const m = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    const v = flaky(g, 'c')
    const host = new HostIO(g, {intentRegionBytes: X}) // one extent a write-intent commit: the bits named below
    v.failWrites = true
    await host.write(3 * X, Buffer.alloc(X, 0xaa), false)
    await host.flush()
    const c = g.member('c')
    assert.equal(c.state, 'fractured')
    assert.match(c.record.stateReason ?? '', /a mirrored write failed: nbd:\/\/backup\.example\/c: connection lost/)
    assert.deepEqual(setBits(c.map.bits), [3])
    await assertInv1(m.fs, 'c', 8)
    await g.close()
  })

  test('given a synchronized clone whose flush fails, when a host writes and flushes, then the flush succeeds, the clone is fractured, and the extents it may have lost stay marked after power loss', async () => {
    const m = await buildGroup({extents: 8, source: fillPattern(8, X, (e) => e + 1), clones: ['c'], mirrored: ['c']})
    const g = await openGroup(m)
    const v = flaky(g, 'c')
    const host = new HostIO(g, {intentRegionBytes: X})
    // Mirrored and acknowledged: the write-intent bits stay set while the extents are hot,
    // and clear in memory at the first sweep after a quiet period.
    await host.write(1 * X, Buffer.alloc(X, 0x11), false)
    await host.write(5 * X + 100, Buffer.alloc(200, 0x55), false)
    assert.deepEqual(setBits(g.member('c').map.bits), [1, 5], 'write-intent: set while hot')
    g.member('c').sweepIntent(0)
    assert.deepEqual(setBits(g.member('c').map.bits), [1, 5], 'write-intent: written since the last sweep')
    g.member('c').sweepIntent(0)
    assert.deepEqual(setBits(g.member('c').map.bits), [], 'write-intent: clear in memory once quiet')
    v.failFlush = true
    await host.flush()
    const c = g.member('c')
    assert.equal(c.state, 'fractured')
    assert.match(c.record.stateReason ?? '', /a flush of the clone failed/)
    assert.deepEqual(setBits(c.map.bits), [1, 5], 'the copies the clone may have lost are to do again')
    // The source's flush did happen: the host's data is durable.
    const durable = m.fs.crash({kind: 'durable'}).contentOf(SRC)
    assert.equal(durable[1 * X], 0x11)
    assert.equal(durable[5 * X + 100], 0x55)
    await assertInv1(m.fs, 'c', 8)
    await g.checkpoint()
    await assertInv1(m.fs, 'c', 8)
    await g.close()
  })
})

describe('a sync to a clone that fails', () => {
  test('given a full sync to a clone whose flush fails at the first checkpoint, then the sync fails with the remote error, the clone is out-of-sync with the reason, and nothing copied since is trusted after power loss', async () => {
    const m = await buildGroup({extents: 16, source: fillPattern(16, X, (e) => e + 1), clones: ['c']})
    const g = await openGroup(m)
    // Damage the source through the host path: D[c] marks extents 0..15.
    const host = new HostIO(g)
    for (let e = 0; e < 16; e++) await host.write(e * X, Buffer.alloc(X, 0x90 + e), false)
    await host.flush()
    const v = flaky(g, 'c')
    v.failFlush = true
    const s = await ForwardSync.start(g, {clone: 'c', command: 'test'})
    assert.ok(s instanceof ForwardSync)
    await assert.rejects(s.run(), (error: unknown) => error instanceof RemoteError && /connection lost during a flush/.test(error.message))
    const c = g.member('c')
    assert.equal(c.state, 'out-of-sync')
    assert.match(c.record.stateReason ?? '', /the sync stopped: nbd:\/\/backup\.example\/c: connection lost/)
    assert.equal(g.record.operation, undefined)
    assert.deepEqual(setBits(c.map.bits), Array.from({length: 16}, (_, e) => e), 'every extent still to copy: none of the copies became durable')
    await assertInv1(m.fs, 'c', 16)
    // The remote is back: the next sync completes.
    v.failFlush = false
    const again = await ForwardSync.start(g, {clone: 'c', command: 'test'})
    assert.ok(again instanceof ForwardSync)
    const sum = await again.run()
    assert.equal(sum.completed, true)
    assert.equal(c.state, 'synchronized')
    assert.ok((await g.src.read(0, 16 * X)).equals(await c.vol.read(0, 16 * X)))
    await g.close()
  })
})

/** A group whose source was overwritten everywhere, in a protected restore from clone c on a flaky "remote". */
async function restoringFromRemote(extents: number): Promise<{g: CloneGroup; v: FlakyVolume; host: HostIO; s: RestoreSession}> {
  const m = await buildGroup({extents, source: fillPattern(extents, X, (e) => e + 1), clones: ['c']})
  const damage = await openGroup(m)
  const writer = new HostIO(damage)
  for (let e = 0; e < extents; e++) await writer.write(e * X, Buffer.alloc(X, 0xee), false)
  await writer.flush()
  await damage.close()
  const g = await openGroup(m, ['c'])
  const v = flaky(g, 'c', 'nbd')
  const host = new HostIO(g)
  const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: true, command: 'test', tuning: {chunkBytes: X, parallel: 1}}))
  host.restore = s
  return {g, v, host, s}
}

describe('a restore from a remote clone that vanishes', () => {
  test('given a protected restore from a remote clone, when the remote stops answering, then COD reads fail cleanly, the copy pauses, and it completes once the remote is back', async () => {
    const extents = 64
    const {g, v, host, s} = await restoringFromRemote(extents)
    const waits: string[] = []
    s.onRemoteWait = (error) => waits.push(error.message)
    v.failReads = true
    const run = s.run()
    // A host read of an extent not yet restored: EIO-like failure, never the damaged data.
    await assert.rejects(host.read((extents - 1) * X, X), /connection lost/)
    for (let i = 0; waits.length < 2 && i < 200; i++) await new Promise((r) => setTimeout(r, 10))
    assert.ok(waits.length >= 2, `the copy pauses and retries (${waits.length} retries)`)
    // Back: the copy goes on by itself; a host read gets the clone's data.
    v.failReads = false
    const got = await host.read((extents - 1) * X, X)
    assert.ok(got.equals(Buffer.alloc(X, extents)), 'COD serves the clone data once the remote is back')
    assert.equal(await run, true)
    await host.gate.exclusive(() => s.finish())
    const src = await g.src.read(0, extents * X)
    assert.ok(src.equals(fillPattern(extents, X, (e) => e + 1)), 'the source is the clone again')
    await g.close()
  })

  test('given a restore whose remote stays away longer than remoteWaitMs, then run() fails with the RemoteError and the restore stays recorded with its progress', async () => {
    const {g, v, s} = await restoringFromRemote(16)
    s.remoteWaitMs = 300
    v.failReads = true
    const t0 = Date.now()
    await assert.rejects(s.run(), RemoteError)
    assert.ok(Date.now() - t0 < 3000, 'bounded by remoteWaitMs')
    await s.suspend()
    assert.equal(g.record.operation?.kind, 'restore')
    await g.close()
  })
})
