/**
 * Orderings of the sync engine against host requests, made deterministic by holding the
 * engine's write to the source in MemoryFs's onOp hook.
 *
 * Regression: a host read of an extent the sync engine is copying waits in the COD queue
 * (DESIGN §4 "host read": "or by waiting for the copy already in S"); the COD engine skips
 * the extent while the engine holds it. When that copy failed, the engine released the
 * extent without waking the queue or kicking COD (only a successful copy did), then stopped
 * on the error: the read waited for ever. Seen as a hang of the power-loss test (crash while
 * a read waited) once copyChunk took one more tick before its first read.
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {HostIO} from '../../src/engine/HostIO.js'
import {RestoreSession} from '../../src/engine/Restore.js'
import type {FsOp} from '../support/MemoryFs.js'
import {buildGroup, fillPattern, gate, openGroup, SRC} from '../helpers/memGroup.js'

const X = 4096
const EXTENTS = 8
const DAMAGED = [2, 5]
const cloneByte = (e: number): number => 0x40 + e

class InjectedIoError extends Error {}

/** Settles with the promise, or with 'hang' after ms. */
async function within<T>(p: Promise<T>, ms: number): Promise<{value: T} | {error: unknown} | 'hang'> {
  let timer: NodeJS.Timeout | undefined
  const hang = new Promise<'hang'>((r) => {
    timer = setTimeout(() => r('hang'), ms)
  })
  try {
    return await Promise.race([p.then((value) => ({value}), (error: unknown) => ({error})), hang])
  } finally {
    clearTimeout(timer)
  }
}

const ticks = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r))
}

/**
 * A restore from clone c whose first sync-engine write to the source (extent 2) is held; a
 * host read of extent 2 is issued while it is held and must be waiting; then that write
 * fails (and, with `powerOff`, every later fs write too). Returns how the read ended.
 */
/**
 * Clone c fractured, then DAMAGED written through the host path; a restore from c started
 * (not run): one extent per chunk, one chunk in flight, so the engine copies one extent alone.
 */
async function startedRestore(isProtected: boolean) {
  const m = await buildGroup({extents: EXTENTS, source: fillPattern(EXTENTS, X, cloneByte), clones: ['c']})
  {
    const g0 = await openGroup(m)
    const h0 = new HostIO(g0)
    for (const e of DAMAGED) await h0.write(e * X, Buffer.alloc(X, 0xee), false)
    await h0.flush()
    await g0.close()
  }
  const g = await openGroup(m, isProtected ? ['c'] : [])
  await g.beginSession('engine ordering test')
  const host = new HostIO(g)
  const s = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'c', protected: isProtected, command: 'test', tuning: {chunkBytes: X, parallel: 1}}))
  host.restore = s
  return {m, g, host, s}
}

async function readWhileEngineCopyFails(o: {protected: boolean; powerOff: boolean}) {
  const {m, g, host, s} = await startedRestore(o.protected)

  const held = gate()
  let reached!: () => void
  const atHold = new Promise<void>((r) => {
    reached = r
  })
  let failedOnce = false
  m.fs.onOp = async (op: FsOp) => {
    if (op.kind !== 'write' || op.path !== SRC) return
    if (!failedOnce) {
      failedOnce = true
      assert.equal(op.offset, DAMAGED[0] * X, 'the engine copies extent 2 first')
      reached()
      await held.promise
      throw new InjectedIoError('injected EIO on the sync engine write')
    }
    if (o.powerOff) throw new InjectedIoError('power is off')
  }
  const run = s.run()
  run.catch(() => undefined)
  await atHold
  assert.ok(g.scoreboard.has(DAMAGED[0]), 'the engine holds extent 2 in S')

  const read = host.read(DAMAGED[0] * X, X)
  read.catch(() => undefined)
  await ticks(5)
  assert.equal(s.queue.length, 1, 'the read waits in the COD queue for the copy already in S')
  assert.equal(s.cod.copies, 0, 'COD did not copy an extent the engine holds')

  held.release()
  const ranOut = await within(run, 2000)
  assert.ok(ranOut !== 'hang' && 'error' in ranOut, 'the sync engine stops on the failed write')
  const outcome = await within(read, 2000)
  m.fs.onOp = undefined
  await g.close().catch(() => undefined)
  return {outcome, s}
}

describe('sync engine orderings against host requests', () => {
  for (const prot of [false, true]) {
    const kind = prot ? 'protected' : 'unprotected'
    test(`${kind} restore: a read waiting for an extent whose engine copy fails is served by COD, not left hanging`, async () => {
      const {outcome, s} = await readWhileEngineCopyFails({protected: prot, powerOff: false})
      assert.notEqual(outcome, 'hang', 'the host read never completed: the failed copy released extent 2 without waking the COD queue')
      assert.ok(outcome !== 'hang' && 'value' in outcome, `the read failed: ${outcome !== 'hang' && 'error' in outcome ? String(outcome.error) : ''}`)
      assert.ok(outcome.value.every((b) => b === cloneByte(DAMAGED[0])), 'the read returns the clone data COD copied')
      assert.equal(s.cod.copies, 1, 'COD copied extent 2 after the engine gave it up')
    })

    test(`${kind} restore: when COD fails too (power off), the waiting read fails with an error, not a hang`, async () => {
      const {outcome} = await readWhileEngineCopyFails({protected: prot, powerOff: true})
      assert.notEqual(outcome, 'hang', 'the host read never completed')
      assert.ok(outcome !== 'hang' && 'error' in outcome, 'the read fails (EIO to the host, never wrong data)')
    })
  }
})

/**
 * Regression (found by restoreModel's property test): a host write that covers a not yet
 * restored extent whole needs no copy first, and sets P before its data lands. A read of that
 * extent issued meanwhile saw "P set, no copy needed" and read the source: pre-restore bytes
 * (INV-2 for reads). It must wait for the write, and then return the write's data.
 */
test('protected restore: a read of an extent a host write is replacing whole waits for that write, never returns pre-restore data', async () => {
  const {m, g, host, s} = await startedRestore(true)
  // The sync engine does not run: extent 2 stays unrestored unless COD copies it.
  const held = gate()
  let reached!: () => void
  const atHold = new Promise<void>((r) => {
    reached = r
  })
  let hit = false
  m.fs.onOp = async (op: FsOp) => {
    // The first write to extent 2's place in the source is the host's (no copy runs: the
    // sync engine is not started, and a whole-extent write needs no COD).
    if (op.kind === 'write' && op.path === SRC && op.offset === DAMAGED[0] * X && !hit) {
      hit = true
      reached()
      await held.promise
    }
  }
  const write = host.write(DAMAGED[0] * X, Buffer.alloc(X, 0x77), false)
  await atHold
  let settled = false
  const read = host.read(DAMAGED[0] * X, 16).finally(() => (settled = true))
  await ticks(5)
  assert.equal(settled, false, 'the read returned while the write replacing the pre-restore extent was in flight')
  assert.equal(s.queue.length, 1, 'the read waits in the COD queue for the write')
  held.release()
  await write
  const got = await read
  assert.ok(got.every((b) => b === 0x77), `the read returns the write's data, got ${got[0]}`)
  m.fs.onOp = undefined
  await g.close().catch(() => undefined)
})
