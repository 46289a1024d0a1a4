/**
 * MemoryFs, the crash-recording DurableFs every power-loss test stands on: it must lose
 * exactly what the durability contract (src/io/DurableFs.ts, DESIGN §7) allows to be lost —
 * no less (or crash tests prove nothing), no more (or they fail on states no disk produces).
 */
import assert from 'node:assert/strict'
import {describe, test} from 'node:test'
import {writeFileAtomic} from '../../src/io/atomicWrite.js'
import {type CrashChoice, enumerateCrashStates, type FsOp, MemoryFs} from '../support/MemoryFs.js'
import {mulberry32} from '../../src/io/prng.js'
import {alignedBuffer} from '../../src/volume/alignedBuffer.js'

const OLD = Buffer.alloc(8192, 0x11)
const NEW = Buffer.alloc(8192, 0x22)

function code(e: unknown): string | undefined {
  return (e as {code?: string}).code
}

/** /d/a and /d/b, 8 KiB of 0x11 each, durable. */
async function withFiles(opts?: {sectorSize?: number; capacity?: number}): Promise<MemoryFs> {
  const fs = new MemoryFs(opts)
  fs.seedDir('/d')
  fs.seedFile('/d/a', OLD)
  fs.seedFile('/d/b', OLD)
  return fs
}

function gate(): {promise: Promise<void>; release: () => void} {
  let release!: () => void
  const promise = new Promise<void>((r) => {
    release = r
  })
  return {promise, release}
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r))

describe('MemoryFs: what survives power loss', () => {
  test('given a write without datasync, then it is lost in the durable crash state and present in "all"', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(NEW.subarray(0, 4096), 0)
    assert.ok(fs.contentOf('/d/a').subarray(0, 4096).equals(NEW.subarray(0, 4096)), 'reads see the write at once')
    assert.equal(fs.pendingCount(), 1)
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').equals(OLD), 'lost without datasync')
    assert.ok(fs.crash().contentOf('/d/a').equals(OLD), 'durable is the default choice')
    assert.ok(fs.crash({kind: 'all'}).contentOf('/d/a').equals(fs.contentOf('/d/a')), '"all" equals the volatile state')
  })

  test('given a write, when the file is datasynced, then it survives every crash state', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(NEW, 0)
    await f.datasync()
    assert.equal(fs.pendingCount(), 0)
    for (const s of enumerateCrashStates(fs, {subsets: 8, seed: 1, torn: true})) assert.ok(fs.crash(s.choice).contentOf('/d/a').equals(NEW), s.label)
  })

  test('given writes to A and B, when only A is datasynced, then B stays pending: a datasync orders only its own file', async () => {
    const fs = await withFiles()
    const a = await fs.open('/d/a', {write: true})
    const b = await fs.open('/d/b', {write: true})
    await b.write(NEW, 0)
    await a.write(NEW, 0)
    await a.datasync()
    const c = fs.crash({kind: 'durable'})
    assert.ok(c.contentOf('/d/a').equals(NEW), 'a was synced')
    assert.ok(c.contentOf('/d/b').equals(OLD), "b's earlier write is not made durable by a's datasync")
    assert.deepEqual(
      fs.pendingOps().map((p) => `${p.kind} ${p.path}`),
      ['write /d/b'],
    )
  })

  test('given a datasync held by onOp, when a write completes meanwhile, then that datasync does not make it durable', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(Buffer.alloc(512, 1), 0)
    const hold = gate()
    fs.onOp = async (op) => {
      if (op.kind === 'datasync') await hold.promise
    }
    const sync = f.datasync()
    await tick()
    fs.onOp = undefined
    await f.write(Buffer.alloc(512, 2), 512)
    hold.release()
    await sync
    const c = fs.crash({kind: 'durable'})
    assert.equal(c.contentOf('/d/a')[0], 1, 'the write before the call is durable')
    assert.equal(c.contentOf('/d/a')[512], 0x11, 'the write issued during the datasync is not')
    assert.equal(fs.pendingCount(), 1)
  })

  test('given pending writes to one file, when some land, then they apply in their original order', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(Buffer.alloc(512, 1), 0)
    await f.write(Buffer.alloc(512, 2), 0)
    assert.equal(fs.crash({kind: 'all'}).contentOf('/d/a')[0], 2)
    assert.equal(fs.crash({kind: 'all-but-one', index: 1}).contentOf('/d/a')[0], 1)
    assert.equal(fs.crash({kind: 'all-but-one', index: 0}).contentOf('/d/a')[0], 2)
    assert.equal(fs.crash({kind: 'prefix', count: 1}).contentOf('/d/a')[0], 1)
    assert.equal(fs.crash({kind: 'prefix', count: 0}).contentOf('/d/a')[0], 0x11)
    const seen = new Set<number>()
    for (let seed = 0; seed < 64; seed++) seen.add(fs.crash({kind: 'subset', seed}).contentOf('/d/a')[0])
    assert.deepEqual([...seen].sort((x, y) => x - y), [1, 2, 0x11], 'random subsets reach every outcome')
    assert.equal(fs.crash({kind: 'subset', seed: 5}).contentOf('/d/a')[0], fs.crash({kind: 'subset', seed: 5}).contentOf('/d/a')[0], 'a seed replays')
  })

  test('given a new file datasynced, when its directory is not fsynced, then its name is lost', async () => {
    const fs = new MemoryFs()
    fs.seedDir('/d')
    const f = await fs.open('/d/new', {write: true, create: 'new'})
    await f.write(NEW, 0)
    await f.datasync()
    await f.close()
    assert.equal(await fs.exists('/d/new'), true)
    assert.equal(await fs.crash({kind: 'durable'}).exists('/d/new'), false, 'the name is not durable yet')
    assert.ok(fs.crash({kind: 'all'}).contentOf('/d/new').equals(NEW), 'when the create lands, the synced data is there')
    await fs.fsyncDir('/d')
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/new').equals(NEW), 'durable after fsyncDir')
  })

  test('given a new file whose name is durable but whose data is not, then it survives empty', async () => {
    const fs = new MemoryFs()
    fs.seedDir('/d')
    const f = await fs.open('/d/new', {write: true, create: 'new'})
    await f.write(NEW, 0)
    await fs.fsyncDir('/d')
    assert.equal(fs.crash({kind: 'durable'}).contentOf('/d/new').length, 0)
  })

  test('given unlink and rename, then they are pending until fsyncDir; a rename that does not land leaves the old names', async () => {
    const fs = await withFiles()
    await fs.unlink('/d/b')
    await fs.rename('/d/a', '/d/c')
    assert.deepEqual(await fs.readdir('/d'), ['c'])
    assert.deepEqual(await fs.crash({kind: 'durable'}).readdir('/d'), ['a', 'b'])
    assert.deepEqual(await fs.crash({kind: 'all-but-one', index: 1}).readdir('/d'), ['a'], 'the unlink landed, the rename did not')
    assert.deepEqual(await fs.crash({kind: 'all-but-one', index: 0}).readdir('/d'), ['b', 'c'], 'the rename landed, the unlink did not')
    await fs.fsyncDir('/d')
    assert.deepEqual(await fs.crash({kind: 'durable'}).readdir('/d'), ['c'])
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/c').equals(OLD))
  })

  test('given a rename across directories, then it is one atomic op, durable at the fsync of the target directory', async () => {
    const fs = await withFiles()
    fs.seedDir('/e')
    await fs.rename('/d/a', '/e/a')
    assert.equal(fs.pendingCount(), 1)
    await fs.fsyncDir('/d')
    assert.equal(fs.pendingCount(), 1, "the source directory's fsync is not enough")
    for (const choice of [{kind: 'durable'}, {kind: 'all'}] as CrashChoice[]) {
      const c = fs.crash(choice)
      const names = [...(await c.readdir('/d')).filter((n) => n === 'a').map(() => '/d/a'), ...(await c.readdir('/e')).map((n) => `/e/${n}`)]
      assert.equal(names.length, 1, `${choice.kind}: exactly one name, never both or neither (${names.join(', ')})`)
    }
    await fs.fsyncDir('/e')
    assert.deepEqual(await fs.crash().readdir('/e'), ['a'])
    assert.deepEqual(await fs.crash().readdir('/d'), ['b'])
  })

  test('given writeFileAtomic, then every crash state at every point holds the old or the new content, never a mix', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    // A pending write beside it, so the crash states also vary what is unrelated.
    const other = await fs.open('/d/b', {write: true})
    await other.write(NEW.subarray(0, 3000), 100)
    const BIG = Buffer.alloc(20000, 0x33)
    let states = 0
    let torn = 0
    const check = (label: string): void => {
      for (const s of enumerateCrashStates(fs, {subsets: 16, seed: 7, torn: true})) {
        const got = fs.crash(s.choice).contentOf('/d/a')
        assert.ok(got.equals(OLD) || got.equals(NEW) || got.equals(BIG), `${label} ${s.label}: neither old nor new`)
        states++
        if (s.choice.torn) torn++
      }
    }
    fs.onOp = (op) => check(`before ${op.kind} ${op.path}`)
    await writeFileAtomic(fs, '/d/a', NEW)
    check('after the first replace')
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').equals(NEW), 'new once writeFileAtomic returned')
    await writeFileAtomic(fs, '/d/a', BIG)
    fs.onOp = undefined
    check('after the second')
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').equals(BIG))
    await f.close()
    assert.ok(states > 100, `${states} states`)
    assert.ok(torn > 5, `${torn} torn states`)
  })

  test('given a torn write, then it lands a prefix of whole units: 512- or 4096-byte boundaries on the device, never inside a sector', async () => {
    for (const sectorSize of [512, 4096]) {
      const fs = new MemoryFs({sectorSize})
      fs.seedDir('/d')
      fs.seedFile('/d/a', Buffer.alloc(64 * 1024, 0x11))
      const f = await fs.open('/d/a', {write: true})
      const offset = 1000 // not aligned: the first unit is partial
      const data = Buffer.alloc(20000, 0x22)
      await f.write(data, offset)
      const end = offset + data.length
      for (const at of [512, 4096] as const) {
        const unit = Math.max(at, sectorSize)
        for (let units = 0; units <= 6; units++) {
          const got = fs.crash({kind: 'durable', torn: {index: 0, at, units}}).contentOf('/d/a')
          let cut = offset
          while (cut < end && got[cut] === 0x22) cut++
          assert.ok(got.subarray(cut).every((b) => b === 0x11) && got.subarray(0, offset).every((b) => b === 0x11), `sector ${sectorSize} at ${at} units ${units}: not a prefix`)
          assert.equal(cut, Math.max(offset, Math.min(end, (Math.floor(offset / unit) + units) * unit)), `sector ${sectorSize} at ${at} units ${units}`)
          assert.ok(cut === offset || cut === end || cut % unit === 0, `sector ${sectorSize} at ${at}: cut at ${cut}`)
        }
        // Default: a random proper cut, the same every time.
        const a = fs.crash({kind: 'durable', torn: {index: 0, at}}).contentOf('/d/a')
        assert.ok(a.equals(fs.crash({kind: 'durable', torn: {index: 0, at}}).contentOf('/d/a')), 'replayable')
        let cut = offset
        while (cut < end && a[cut] === 0x22) cut++
        assert.ok(cut > offset && cut < end && cut % unit === 0, `default cut ${cut} is proper and on a ${unit}-byte boundary`)
      }
    }
  })

  test('given enumerated torn states, then every torn write is cut on a sector boundary and nothing else is partial', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    const writes: Array<{off: number; len: number; v: number}> = []
    const r = mulberry32(3)
    for (let i = 0; i < 40; i++) {
      const off = Math.floor(r() * 6000)
      const len = 1 + Math.floor(r() * 6000)
      writes.push({off, len, v: 0x30 + i})
      await f.write(Buffer.alloc(len, 0x30 + i), off)
    }
    let torn = 0
    for (const s of enumerateCrashStates(fs, {subsets: 4, seed: 3, torn: true, max: 500})) {
      if (!s.choice.torn) continue
      torn++
      const got = fs.crash(s.choice).contentOf('/d/a')
      const w = writes[s.choice.torn.index]
      const unit = s.choice.torn.at
      // The torn write's bytes form a prefix ending on a unit boundary (or the write's end)...
      let cut = w.off
      while (cut < w.off + w.len && got[cut] === w.v) cut++
      // ...unless a later landed write covers it; only check states where nothing after it landed.
      if (s.choice.kind === 'prefix') {
        assert.ok(cut === w.off + w.len || cut % unit === 0, `${s.label}: cut at ${cut}`)
        assert.ok(got.subarray(cut, w.off + w.len).every((b) => b !== w.v), `${s.label}: bytes of the write past the cut`)
      }
    }
    assert.ok(torn >= 20, `${torn} torn states`)
  })

  test('given a crash state, then it is an independent fs that can be written, crash again, and recover again', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(NEW, 0)
    const c1 = fs.crash({kind: 'all'})
    assert.equal(c1.pendingCount(), 0, 'what landed is durable in the new fs')
    assert.ok(c1.crash({kind: 'durable'}).contentOf('/d/a').equals(NEW))
    const g = await c1.open('/d/b', {write: true})
    await g.write(NEW.subarray(0, 100), 0)
    const h = await c1.open('/d/a', {write: true})
    await h.write(Buffer.alloc(10, 0x44), 0)
    await h.datasync()
    const c2 = c1.crash({kind: 'durable'})
    assert.ok(c2.contentOf('/d/a').subarray(0, 10).every((b) => b === 0x44), 'the synced write in the crashed fs survives its crash')
    assert.ok(c2.contentOf('/d/b').equals(OLD), 'the unsynced one does not')
    // Nothing leaks between the original and its snapshots (contents are shared copy-on-write).
    assert.ok(fs.contentOf('/d/b').equals(OLD), 'the original is untouched by its crash copy')
    assert.ok(fs.contentOf('/d/a').equals(NEW))
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').equals(OLD))
    await f.write(Buffer.alloc(10, 0x55), 100)
    await f.datasync()
    assert.equal(c1.contentOf('/d/a')[100], 0x22, 'writes to the original do not reach the snapshot')
    assert.equal(c2.contentOf('/d/a')[100], 0x22)
    const c3 = c2.crash({kind: 'all'})
    const k = await c3.open('/d/a', {write: true})
    await k.write(Buffer.alloc(1, 0x66), 0)
    assert.equal(c2.contentOf('/d/a')[0], 0x44)
    const d = fs.crash({kind: 'durable'}).contentOf('/d/a')
    assert.ok(d[0] === 0x22 && d[100] === 0x55, "the original's own history is intact")
  })

  test('given a hold on a write, then the write has not happened until it is released, and a crash meanwhile does not contain it', async () => {
    const fs = await withFiles()
    const seen: string[] = []
    const hold = gate()
    let held = false
    fs.onOp = async (op: FsOp) => {
      seen.push(`${op.kind} ${op.path}${op.offset === undefined ? '' : ` @${op.offset}+${op.length}`}`)
      if (op.kind === 'write' && !held) {
        held = true
        await hold.promise
      }
    }
    const f = await fs.open('/d/a', {write: true})
    const w = f.write(NEW, 0)
    for (let i = 0; i < 5; i++) await tick()
    assert.ok(held)
    assert.ok(fs.contentOf('/d/a').equals(OLD), 'the held write has not happened')
    assert.equal(fs.pendingCount(), 0)
    assert.ok(fs.crash({kind: 'all'}).contentOf('/d/a').equals(OLD), 'a crash while it is held does not contain it')
    await fs.open('/d/b', {write: true}).then((b) => b.write(NEW, 0)) // other I/O goes on meanwhile
    assert.ok(fs.contentOf('/d/b').equals(NEW))
    hold.release()
    await w
    assert.ok(fs.contentOf('/d/a').equals(NEW), 'released: it happened')
    await f.datasync()
    await fs.rename('/d/a', '/d/c')
    await fs.fsyncDir('/d')
    await fs.unlink('/d/b')
    await f.truncate(10)
    const n = await fs.open('/d/n', {write: true, create: 'new'})
    await n.close()
    assert.deepEqual(seen, ['write /d/a @0+8192', 'write /d/b @0+8192', 'datasync /d/a', 'rename /d/a', 'fsyncDir /d', 'unlink /d/b', 'truncate /d/a', 'create /d/n'])
    assert.equal(fs.opCount, 8)
  })

  test('given onOp that throws at the Nth op, then that op does not happen (a kill at the Nth operation)', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    fs.onOp = () => {
      if (fs.opCount === 2) throw new Error('killed')
    }
    await f.write(Buffer.alloc(10, 1), 0)
    await assert.rejects(f.write(NEW, 0), /killed/)
    assert.equal(fs.contentOf('/d/a')[100], 0x11)
    assert.equal(fs.pendingCount(), 1)
    assert.equal(fs.opCount, 2)
  })

  test('given a crash taken from inside onOp, then it is the state just before that op', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(NEW, 0)
    let before: MemoryFs | undefined
    fs.onOp = (op) => {
      if (op.kind === 'datasync') before = fs.crash({kind: 'durable'})
    }
    await f.datasync()
    assert.ok(before?.contentOf('/d/a').equals(OLD))
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').equals(NEW))
  })
})

describe('enumerateCrashStates', () => {
  test('given n pending ops, then durable, all, prefixes 1..n-1, every all-but-one, the subsets and the torn writes, each once', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(Buffer.alloc(100, 1), 0) // one sector: cannot tear
    await f.write(Buffer.alloc(2000, 2), 0) // tears
    await fs.rename('/d/b', '/d/c')
    await f.write(Buffer.alloc(10, 3), 510) // crosses a sector boundary: tears
    const states = [...enumerateCrashStates(fs, {subsets: 5, seed: 1, torn: true})]
    const kinds = states.map((s) => (s.choice.torn ? 'torn' : s.choice.kind))
    assert.deepEqual(kinds, ['durable', 'all', 'prefix', 'prefix', 'prefix', 'all-but-one', 'all-but-one', 'all-but-one', 'all-but-one', 'subset', 'subset', 'subset', 'subset', 'subset', 'torn', 'torn'])
    assert.equal(new Set(states.map((s) => s.label)).size, states.length, 'labels are unique')
    assert.deepEqual(
      states.filter((s) => s.choice.torn).map((s) => s.choice.torn?.index),
      [1, 3],
    )
    assert.deepEqual([...enumerateCrashStates(fs.crash({kind: 'all'}), {subsets: 5, seed: 1, torn: true})].map((s) => s.label), ['durable'], 'nothing pending: one state')
  })

  test('given thousands of pending ops, then at most 200 states by default (or max), spread over the whole list, the same for the same seed', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    for (let i = 0; i < 3000; i++) await f.write(Buffer.alloc(1024, i & 0xff), (i % 8) * 1024)
    const all = [...enumerateCrashStates(fs, {subsets: 30, seed: 1, torn: true})]
    assert.ok(all.length <= 200, `${all.length} states`)
    assert.ok(all.length >= 190, `${all.length} states: the budget is used`)
    for (const k of ['prefix', 'all-but-one', 'subset']) assert.ok(all.filter((s) => s.choice.kind === k && !s.choice.torn).length >= 30, k)
    assert.ok(all.filter((s) => s.choice.torn).length >= 30, 'torn')
    const prefixes = all.flatMap((s) => (s.choice.kind === 'prefix' && !s.choice.torn ? [s.choice.count] : []))
    assert.equal(prefixes[0], 1)
    assert.equal(prefixes.at(-1), 2999, 'the last prefix is included')
    const capped = [...enumerateCrashStates(fs, {subsets: 500, seed: 1, torn: true, max: 50})]
    assert.equal(capped.length, 50)
    const again = [...enumerateCrashStates(fs, {subsets: 30, seed: 1, torn: true})]
    assert.deepEqual(
      again.map((s) => s.label),
      all.map((s) => s.label),
    )
  })

  test('given a crash choice, then it is plain data: printed and parsed, it replays the same state', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    await f.write(NEW, 100)
    await f.write(Buffer.alloc(700, 0x77), 3000)
    for (const s of enumerateCrashStates(fs, {subsets: 3, seed: 9, torn: true})) {
      const replay = JSON.parse(JSON.stringify(s.choice)) as CrashChoice
      assert.ok(fs.crash(replay).contentOf('/d/a').equals(fs.crash(s.choice).contentOf('/d/a')), s.label)
    }
  })
})

describe('MemoryFs: the rest of the DurableFs surface', () => {
  test('Node-style errors: ENOENT, EEXIST, EBADF on a closed or read-only handle', async () => {
    const fs = await withFiles()
    await assert.rejects(fs.open('/d/missing'), (e) => code(e) === 'ENOENT')
    await assert.rejects(fs.open('/d/a', {write: true, create: 'new'}), (e) => code(e) === 'EEXIST')
    await assert.rejects(fs.open('/nodir/x', {write: true, create: 'maybe'}), (e) => code(e) === 'ENOENT')
    await assert.rejects(fs.open('/d'), (e) => code(e) === 'EISDIR')
    await assert.rejects(fs.stat('/d/missing'), (e) => code(e) === 'ENOENT')
    await assert.rejects(fs.rename('/d/missing', '/d/x'), (e) => code(e) === 'ENOENT')
    await assert.rejects(fs.realpath('/d/missing'), (e) => code(e) === 'ENOENT')
    await assert.rejects(fs.readdir('/nodir'), (e) => code(e) === 'ENOENT')
    await assert.rejects(fs.readFile('/d/missing'), (e) => code(e) === 'ENOENT')
    await fs.unlink('/d/missing') // like rm --force
    const ro = await fs.open('/d/a')
    await assert.rejects(ro.write(NEW, 0), (e) => code(e) === 'EBADF')
    await ro.close()
    await assert.rejects(ro.read(Buffer.alloc(1), 0), (e) => code(e) === 'EBADF')
    const rw = await fs.open('/d/a', {write: true})
    await rw.close()
    await assert.rejects(rw.write(NEW, 0), (e) => code(e) === 'EBADF')
    await assert.rejects(rw.datasync(), (e) => code(e) === 'EBADF')
    assert.equal(fs.opCount, 0, 'failed calls are not ops')
    const m = await fs.open('/d/m', {write: true, create: 'maybe'})
    await m.close()
    assert.equal((await fs.open('/d/m', {create: 'maybe'})).path, '/d/m', 'maybe opens an existing file')
  })

  test('stat: dev 1, an ino per inode kept across renames and crashes, size, and mtime/ctime that advance on each write and truncate', async () => {
    const fs = await withFiles()
    const a = await fs.stat('/d/a')
    const b = await fs.stat('/d/b')
    assert.equal(a.dev, 1)
    assert.equal(a.isFile, true)
    assert.equal(a.isBlockDevice, false)
    assert.notEqual(a.ino, b.ino)
    assert.equal(a.size, OLD.length)
    const f = await fs.open('/d/a', {write: true})
    await f.write(Buffer.alloc(10), 8192)
    const a2 = await fs.stat('/d/a')
    assert.ok(a2.mtimeMs > a.mtimeMs && a2.ctimeMs > a.ctimeMs)
    assert.equal(a2.size, 8202)
    assert.equal(await f.size(), 8202)
    await f.truncate(100)
    assert.ok((await fs.stat('/d/a')).mtimeMs > a2.mtimeMs)
    await fs.rename('/d/a', '/d/z')
    assert.equal((await fs.stat('/d/z')).ino, a.ino, 'a rename keeps the inode')
    await fs.fsyncDir('/d')
    assert.equal((await fs.crash().stat('/d/z')).ino, a.ino, 'so does a crash')
    assert.equal((await fs.stat('/d')).isFile, false)
  })

  test('reads are positional and short only at the end; a write past the end leaves zeros; truncate is pending like a write', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    const buf = Buffer.alloc(100)
    assert.equal(await f.read(buf, 8150), 42)
    assert.equal(await f.read(buf, 9000), 0)
    assert.equal(await f.read(buf, 0, 10), 10)
    await f.write(Buffer.from([7]), 10000)
    assert.ok(fs.contentOf('/d/a').subarray(8192, 10000).every((x) => x === 0))
    await f.truncate(4096)
    assert.equal(fs.contentOf('/d/a').length, 4096)
    assert.equal(fs.crash({kind: 'durable'}).contentOf('/d/a').length, 8192)
    await f.truncate(6000)
    assert.ok(fs.contentOf('/d/a').subarray(4096).every((x) => x === 0), 'a truncate that grows reads zeros, not old data')
    await f.datasync()
    assert.equal(fs.crash({kind: 'durable'}).contentOf('/d/a').length, 6000)
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').subarray(4096).every((x) => x === 0))
  })

  test('readdir lists files and subdirectories; exists and realpath see both', async () => {
    const fs = await withFiles()
    await fs.mkdirp('/d/sub/deeper')
    assert.deepEqual(await fs.readdir('/d'), ['a', 'b', 'sub'])
    assert.equal(await fs.exists('/d/sub/deeper'), true)
    assert.equal(await fs.exists('/d/sub/x'), false)
    assert.equal(await fs.realpath('/d/./sub/../a'), '/d/a')
    assert.deepEqual(await fs.crash().readdir('/d'), ['a', 'b'], 'a new directory is not durable before its parent is fsynced')
  })

  test('given a new directory, then it and the entries inside it survive a crash only once its parent is fsynced', async () => {
    const fs = new MemoryFs()
    fs.seedDir('/state/groups')
    const seen: string[] = []
    fs.onOp = (op) => {
      seen.push(`${op.kind} ${op.path}`)
    }
    await fs.mkdirp('/state/groups/g/sub')
    assert.deepEqual(seen, ['mkdir /state/groups/g', 'mkdir /state/groups/g/sub'], 'each level made is one op')
    assert.deepEqual(fs.pendingOps().map((o) => `${o.kind} ${o.path}`), ['mkdir /state/groups/g', 'mkdir /state/groups/g/sub'])
    const f = await fs.open('/state/groups/g/group.json', {write: true, create: 'new'})
    await f.write(NEW, 0)
    await f.datasync()
    await f.close()
    // g's mkdir lands, sub's (the second pending op) does not: g with the file, without sub.
    assert.deepEqual(await fs.crash({kind: 'all-but-one', index: 1}).readdir('/state/groups/g'), ['group.json'])
    await fs.fsyncDir('/state/groups/g')
    // The file, its name and sub's name in g are durable, but g itself is not: all of it is lost.
    let c = fs.crash({kind: 'durable'})
    assert.deepEqual(await c.readdir('/state/groups'), [])
    assert.equal(await c.exists('/state/groups/g/group.json'), false)
    assert.deepEqual(await fs.crash({kind: 'all'}).readdir('/state/groups/g'), ['group.json', 'sub'], 'when the mkdir of g lands, so does what is in g')
    await fs.fsyncDir('/state/groups')
    c = fs.crash({kind: 'durable'})
    assert.ok(c.contentOf('/state/groups/g/group.json').equals(NEW), 'durable once the parent is fsynced')
    assert.deepEqual(await c.readdir('/state/groups/g'), ['group.json', 'sub'])
    assert.equal(fs.pendingCount(), 0)
  })

  test('given a capacity, then a write that would allocate past it fails with ENOSPC; overwrites, holes and freed files behave as on disk', async () => {
    const fs = new MemoryFs({capacity: 10000})
    fs.seedDir('/d')
    const f = await fs.open('/d/x', {write: true, create: 'new'})
    await f.write(Buffer.alloc(8192), 0)
    await f.write(Buffer.alloc(8192, 1), 0) // an overwrite allocates nothing
    await assert.rejects(f.write(Buffer.alloc(4096), 8192), (e) => code(e) === 'ENOSPC')
    assert.equal(fs.contentOf('/d/x').length, 8192, 'the failed write changed nothing')
    await f.write(Buffer.alloc(1808), 8192) // exactly up to the capacity
    assert.equal(fs.usedBytes, 10000)
    await assert.rejects(f.write(Buffer.alloc(1), 10000), (e) => code(e) === 'ENOSPC')
    await f.truncate(4096) // frees
    await f.write(Buffer.alloc(4096, 2), 4096)
    // A sparse file: its size costs nothing until written.
    const s = await fs.open('/d/sparse', {write: true, create: 'new'})
    await s.truncate(1 << 20)
    await assert.rejects(s.write(Buffer.alloc(4096), 0), (e) => code(e) === 'ENOSPC')
    await s.write(Buffer.alloc(1808), 500_000)
    // An unlinked file's space comes back when its last handle closes.
    await fs.unlink('/d/x')
    await assert.rejects(s.write(Buffer.alloc(100), 0), (e) => code(e) === 'ENOSPC')
    await f.close()
    await s.write(Buffer.alloc(8192), 0)
    assert.equal(fs.usedBytes, 10000)
  })

  test('given a volume-sized file and thousands of small writes with periodic datasyncs, then writes, syncs and crashes stay fast', async () => {
    const MiB = 1 << 20
    const fs = new MemoryFs()
    fs.seedDir('/vol')
    fs.seedFile('/vol/src.img', Buffer.alloc(4 * MiB, 0x11))
    fs.seedFile('/vol/clone.img', Buffer.alloc(4 * MiB, 0x11))
    const f = await fs.open('/vol/src.img', {write: true})
    const r = mulberry32(1)
    const model = Buffer.alloc(4 * MiB, 0x11)
    const t0 = performance.now()
    let crashes = 0
    for (let i = 0; i < 5000; i++) {
      const off = Math.floor(r() * (4 * MiB - 4096))
      const data = Buffer.alloc(512 + Math.floor(r() * 3584), i & 0xff)
      await f.write(data, off)
      data.copy(model, off)
      if (i % 250 === 249) await f.datasync()
      if (i % 500 === 0) {
        crashes++
        for (const s of enumerateCrashStates(fs, {subsets: 2, seed: i, torn: true, max: 8})) assert.equal(fs.crash(s.choice).contentOf('/vol/src.img').length, 4 * MiB)
      }
    }
    await f.datasync()
    const ms = performance.now() - t0
    assert.ok(fs.crash().contentOf('/vol/src.img').equals(model))
    assert.ok(ms < 20_000, `5000 writes, 20 datasyncs and ${crashes * 8} crash states took ${ms.toFixed(0)} ms`)
  })
})

// ---------------------------------------------------------------------------------------
// A differential test against a deliberately naive reference: an op log replayed from the
// start for every crash state. Random ops on two directories and a few names; after each
// step the volatile state must match, and every kind of crash state must match the replay.

type RefOp =
  | {kind: 'create'; dir: string; name: string; ino: number}
  | {kind: 'unlink'; dir: string; name: string; ino: number}
  | {kind: 'rename'; fromDir: string; from: string; dir: string; to: string; ino: number}
  | {kind: 'write'; ino: number; off: number; data: Buffer}
  | {kind: 'truncate'; ino: number; size: number}

class Reference {
  log: Array<{op: RefOp; durable: boolean}> = []
  vol = new Map<string, Map<string, number>>([
    ['/d', new Map()],
    ['/e', new Map()],
  ])
  content = new Map<number, Buffer>()
  opens = new Map<number, number>()

  do(op: RefOp): void {
    this.log.push({op, durable: false})
    Reference.apply(op, this.vol, this.content)
  }

  static apply(op: RefOp, tables: Map<string, Map<string, number>>, content: Map<number, Buffer>): void {
    switch (op.kind) {
      case 'create':
        tables.get(op.dir)!.set(op.name, op.ino)
        if (!content.has(op.ino)) content.set(op.ino, Buffer.alloc(0))
        break
      case 'unlink':
        if (tables.get(op.dir)!.get(op.name) === op.ino) tables.get(op.dir)!.delete(op.name)
        break
      case 'rename':
        if (tables.get(op.fromDir)!.get(op.from) === op.ino) tables.get(op.fromDir)!.delete(op.from)
        tables.get(op.dir)!.set(op.to, op.ino)
        break
      case 'write': {
        const old = content.get(op.ino) ?? Buffer.alloc(0)
        const next = Buffer.alloc(Math.max(old.length, op.off + op.data.length))
        old.copy(next)
        op.data.copy(next, op.off)
        content.set(op.ino, next)
        break
      }
      case 'truncate': {
        const old = content.get(op.ino) ?? Buffer.alloc(0)
        const next = Buffer.alloc(op.size)
        old.copy(next, 0, 0, Math.min(op.size, old.length))
        content.set(op.ino, next)
        break
      }
    }
  }

  datasync(ino: number): void {
    for (const e of this.log) if ((e.op.kind === 'write' || e.op.kind === 'truncate') && e.op.ino === ino) e.durable = true
  }

  fsyncDir(dir: string): void {
    for (const e of this.log) if ((e.op.kind === 'create' || e.op.kind === 'unlink' || e.op.kind === 'rename') && e.op.dir === dir) e.durable = true
  }

  /** Pending entries, minus those on inodes no crash can reach (as MemoryFs drops them). */
  pending(): Array<{op: RefOp; durable: boolean}> {
    const reach = new Set<number>()
    for (const t of this.vol.values()) for (const ino of t.values()) reach.add(ino)
    for (const [ino, n] of this.opens) if (n > 0) reach.add(ino)
    for (const e of this.log) if (e.op.kind === 'create' || e.op.kind === 'unlink' || e.op.kind === 'rename') if (!e.durable) reach.add(e.op.ino)
    const durTables = this.replay(() => false)
    for (const t of durTables.tables.values()) for (const ino of t.values()) reach.add(ino)
    return this.log.filter((e) => !e.durable && ((e.op.kind !== 'write' && e.op.kind !== 'truncate') || reach.has(e.op.ino)))
  }

  replay(lands: (pendingIndex: number) => boolean): {tables: Map<string, Map<string, number>>; content: Map<number, Buffer>} {
    const tables = new Map([
      ['/d', new Map<string, number>()],
      ['/e', new Map<string, number>()],
    ])
    const content = new Map<number, Buffer>()
    const pending = this.log.filter((e) => !e.durable)
    for (const e of this.log) {
      if (e.durable || lands(pending.indexOf(e))) Reference.apply(e.op, tables, content)
    }
    return {tables, content}
  }
}

async function snapshot(fs: MemoryFs): Promise<string[]> {
  const out: string[] = []
  for (const d of ['/d', '/e'])
    for (const n of await fs.readdir(d)) out.push(`${d}/${n}=${fs.contentOf(`${d}/${n}`).toString('hex')}`)
  return out
}

function refSnapshot(s: {tables: Map<string, Map<string, number>>; content: Map<number, Buffer>}): string[] {
  const out: string[] = []
  for (const d of ['/d', '/e'])
    for (const n of [...s.tables.get(d)!.keys()].sort()) out.push(`${d}/${n}=${(s.content.get(s.tables.get(d)!.get(n)!) ?? Buffer.alloc(0)).toString('hex')}`)
  return out
}

describe('MemoryFs: O_DIRECT (openDirect)', () => {
  test('given a direct handle, when offset, length or memory is not 4 KiB-aligned, then EINVAL as from Linux, nothing written and nothing counted', async () => {
    const fs = await withFiles()
    const d = await fs.openDirect('/d/a', {write: true})
    const buf = alignedBuffer(8192)
    const cases: Array<[string, () => Promise<unknown>]> = [
      ['read at an unaligned offset', () => d.read(buf.subarray(0, 4096), 512)],
      ['read of an unaligned length', () => d.read(buf, 0, 4095)],
      ['read into unaligned memory', () => d.read(buf.subarray(512, 512 + 4096), 0)],
      ['read into a plain Buffer', () => d.read(Buffer.alloc(4096), 0)],
      ['write at an unaligned offset', () => d.write(buf.subarray(0, 4096), 100)],
      ['write of an unaligned length', () => d.write(buf.subarray(0, 1000), 0)],
      ['write from unaligned memory', () => d.write(buf.subarray(4096 - 512, 8192 - 512), 0)],
      ['write from a plain Buffer', () => d.write(Buffer.alloc(4096, 0x33), 0)],
    ]
    for (const [what, io] of cases) await assert.rejects(io(), (e: unknown) => code(e) === 'EINVAL', what)
    assert.ok(fs.contentOf('/d/a').equals(OLD), 'nothing was written')
    assert.equal(fs.directReads + fs.directWrites, 0)
    await d.close()
  })

  test('given aligned I/O through a direct handle, then it reads what the ordinary handle wrote, its writes are pending until a datasync of any handle on the file, and it is counted', async () => {
    const fs = await withFiles()
    const f = await fs.open('/d/a', {write: true})
    const d = await fs.openDirect('/d/a')
    await f.write(Buffer.alloc(4096, 0x44), 4096)
    const buf = alignedBuffer(8192)
    assert.equal(await d.read(buf, 0), 8192)
    assert.ok(buf.subarray(0, 4096).equals(OLD.subarray(0, 4096)) && buf.subarray(4096).every((b) => b === 0x44), 'a direct read sees the unflushed buffered write')
    buf.fill(0x55)
    await d.write(buf.subarray(0, 4096), 0)
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').subarray(0, 4096).equals(OLD.subarray(0, 4096)), 'not durable before a datasync')
    await f.datasync()
    assert.ok(fs.crash({kind: 'durable'}).contentOf('/d/a').subarray(0, 4096).every((b) => b === 0x55), 'durable after the datasync of the other handle')
    assert.equal(fs.directReads, 1)
    assert.equal(fs.directWrites, 1)
    await assert.rejects(fs.openDirect('/d/missing'), (e: unknown) => code(e) === 'ENOENT')
    const ro = await fs.openDirect('/d/b', {write: false})
    await assert.rejects(ro.write(buf.subarray(0, 4096), 0), (e: unknown) => code(e) === 'EBADF')
    await Promise.all([f.close(), d.close(), ro.close()])
  })
})

describe('MemoryFs: holes (SEEK_DATA, SEEK_HOLE, PUNCH_HOLE)', () => {
  const K = 4096
  test('given a file with holes, then a seeded file is data only where it is not zero, and a grown file is a hole', async () => {
    const fs = new MemoryFs({holes: true})
    const content = Buffer.alloc(8 * K)
    content.fill(7, 2 * K, 3 * K)
    fs.seedFile('/a', content)
    const f = await fs.open('/a', {write: true})
    assert.equal(f.holes!.seekData(0), 2 * K)
    assert.equal(f.holes!.seekHole(2 * K), 3 * K)
    assert.equal(f.holes!.seekData(3 * K), -1)
    await f.truncate(16 * K)
    assert.equal(f.holes!.seekData(3 * K), -1, 'the grown part is a hole')
    assert.equal(f.holes!.seekHole(12 * K), 12 * K)
    await f.close()
    const plain = await new MemoryFs().open('/c', {write: true, create: 'new'})
    assert.equal(plain.holes, undefined, 'without the option, files have no holes to tell')
  })

  test('given a punch not yet synced, then it reads as zeros at once; a crash lands it or not, and reports data wherever the content may be data; after datasync it is durable', async () => {
    const fs = new MemoryFs({holes: true})
    fs.seedFile('/a', Buffer.alloc(4 * K, 9))
    const f = await fs.open('/a', {write: true})
    await f.holes!.punchHole(K, 2 * K)
    assert.ok(fs.contentOf('/a').subarray(K, 3 * K).every((b) => b === 0), 'zeros at once')
    assert.equal(f.holes!.seekHole(0), K)
    assert.equal(f.holes!.seekData(K), 3 * K)
    assert.deepEqual(
      fs.pendingOps().map((o) => [o.kind, o.offset, o.length]),
      [['punch', K, 2 * K]],
    )
    for (const choice of [{kind: 'durable'}, {kind: 'all'}] as CrashChoice[]) {
      const c = fs.crash(choice)
      const landed = choice.kind === 'all'
      assert.ok(
        c.contentOf('/a').subarray(K, 3 * K).every((b) => b === (landed ? 0 : 9)),
        `${choice.kind}: the punch ${landed ? 'landed' : 'did not land'}`,
      )
      const g = await c.open('/a')
      assert.equal(g.holes!.seekHole(0), 4 * K, `${choice.kind}: unsure ranges read as data after a crash`)
      await g.close()
    }
    await f.datasync()
    assert.equal(fs.pendingCount(), 0)
    assert.ok(fs.crash().contentOf('/a').subarray(K, 3 * K).every((b) => b === 0), 'durable after datasync')
    await f.close()
  })
})

describe('MemoryFs against a naive reference', () => {
  test('given random creates, writes, truncates, syncs, renames and unlinks, then the volatile state and every crash state match a replay of the op log', async () => {
    let checked = 0
    for (let run = 0; run < 40; run++) {
      const r = mulberry32(1000 + run)
      const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]
      const fs = new MemoryFs()
      fs.seedDir('/d')
      fs.seedDir('/e')
      const ref = new Reference()
      const handles: Array<{f: Awaited<ReturnType<MemoryFs['open']>>; ino: number}> = []
      for (let step = 0; step < 60; step++) {
        const x = r()
        const dir = pick(['/d', '/e'])
        const name = pick(['a', 'b', 'c'])
        const path = `${dir}/${name}`
        if (x < 0.15) {
          if (await fs.exists(path)) continue
          const f = await fs.open(path, {write: true, create: 'new'})
          const ino = (await fs.stat(path)).ino
          handles.push({f, ino})
          ref.opens.set(ino, (ref.opens.get(ino) ?? 0) + 1)
          ref.do({kind: 'create', dir, name, ino})
        } else if (x < 0.25) {
          if (!(await fs.exists(path))) continue
          const f = await fs.open(path, {write: true})
          const ino = (await fs.stat(path)).ino
          handles.push({f, ino})
          ref.opens.set(ino, (ref.opens.get(ino) ?? 0) + 1)
        } else if (x < 0.5 && handles.length) {
          const h = pick(handles)
          const off = Math.floor(r() * 3000)
          const data = Buffer.alloc(1 + Math.floor(r() * 1500), Math.floor(r() * 256))
          await h.f.write(data, off)
          ref.do({kind: 'write', ino: h.ino, off, data})
        } else if (x < 0.55 && handles.length) {
          const h = pick(handles)
          const size = Math.floor(r() * 4000)
          await h.f.truncate(size)
          ref.do({kind: 'truncate', ino: h.ino, size})
        } else if (x < 0.65 && handles.length) {
          const h = pick(handles)
          await h.f.datasync()
          ref.datasync(h.ino)
        } else if (x < 0.7 && handles.length) {
          const i = Math.floor(r() * handles.length)
          await handles[i].f.close()
          ref.opens.set(handles[i].ino, ref.opens.get(handles[i].ino)! - 1)
          handles.splice(i, 1)
        } else if (x < 0.8) {
          if (!(await fs.exists(path))) continue
          const toDir = pick(['/d', '/e'])
          const to = pick(['a', 'b', 'c'])
          if (`${toDir}/${to}` === path) continue
          const ino = (await fs.stat(path)).ino
          await fs.rename(path, `${toDir}/${to}`)
          ref.do({kind: 'rename', fromDir: dir, from: name, dir: toDir, to, ino})
        } else if (x < 0.87) {
          if (!(await fs.exists(path))) continue
          const ino = (await fs.stat(path)).ino
          await fs.unlink(path)
          ref.do({kind: 'unlink', dir, name, ino})
        } else {
          await fs.fsyncDir(dir)
          ref.fsyncDir(dir)
        }
        assert.deepEqual(await snapshot(fs), refSnapshot({tables: ref.vol, content: ref.content}), `run ${run} step ${step}: volatile state`)
        const n = ref.pending().length
        assert.equal(fs.pendingCount(), n, `run ${run} step ${step}: pending count`)
        const pending = ref.pending()
        const all = ref.log.filter((e) => !e.durable)
        // Choices index MemoryFs's pending list; map them to the reference's full pending list.
        const idx = (i: number): number => all.indexOf(pending[i])
        const choices: Array<{choice: CrashChoice; lands: (i: number) => boolean}> = [
          {choice: {kind: 'durable'}, lands: () => false},
          {choice: {kind: 'all'}, lands: () => true},
        ]
        const k = Math.floor(r() * (n + 1))
        choices.push({choice: {kind: 'prefix', count: k}, lands: (i) => pending.slice(0, k).some((_, j) => idx(j) === i)})
        if (n > 0) {
          const j = Math.floor(r() * n)
          choices.push({choice: {kind: 'all-but-one', index: j}, lands: (i) => i !== idx(j)})
          const seed = Math.floor(r() * 1e9)
          const coin = mulberry32(seed)
          const chosen = new Set(pending.filter(() => coin() < 0.5).map((e) => all.indexOf(e)))
          choices.push({choice: {kind: 'subset', seed}, lands: (i) => chosen.has(i)})
        }
        for (const c of choices) {
          const crashed = fs.crash(c.choice)
          const want = refSnapshot(ref.replay(c.lands))
          assert.deepEqual(await snapshot(crashed), want, `run ${run} step ${step}: ${JSON.stringify(c.choice)}`)
          assert.equal(crashed.pendingCount(), 0)
          assert.deepEqual(await snapshot(crashed.crash({kind: 'durable'})), want, 'a crash of the crash, with nothing pending, is the same')
          checked++
        }
      }
    }
    assert.ok(checked > 2000, `${checked} crash states checked`)
  })
})
