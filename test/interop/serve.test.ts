/**
 * `clonectl serve GROUP` through the CLI, with real NBD clients (DESIGN §5, §7). The server
 * runs in the background; every other command (clone fracture/sync/add, restore, status) is
 * run "from another shell" and reaches it through the control socket.
 *
 * Scenarios, in order, on one group g (64 MiB source, clones c1 and c2 synchronized):
 *   given serve g, when nbdinfo/qemu-io/nbdcopy use the export, then they see the source;
 *   given c1 synchronized, when a host writes, then c1 mirrors it (cmp after fracture);
 *   given c1 fractured, when a host writes, then its map records it and sync makes it equal;
 *   given serve g running, a second serve g fails fast with exit 4;
 *   fio --verify during fracture + sync, and during a protected restore from c1;
 *   SIGTERM: exit 0, state saved.
 * And on a 1 GiB sparse group: the first read after a restore starts is answered quickly
 * (latency printed, not asserted), and serve resumes an interrupted restore at start.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cmd} from '../../src/nbd/protocol.js'
import {
  GiB,
  MiB,
  NbdTestClient,
  type Served,
  clonectl,
  clonectlOk,
  fioNbd,
  has,
  run,
  runOk,
  sameContent,
  sha256File,
  sleep,
  startServe,
  statusJson,
  tempDir,
  needTool,
} from '../helpers/serve.js'

const SIZE = 64 * MiB
const missing = ['nbdinfo', 'qemu-io', 'nbdcopy', 'fio'].filter((c) => !has(c, '--version'))
const needClients = missing.length ? `needs ${missing.join(', ')}` : false

let dir: string
let state: string
let src: string
let served: Served | undefined

const c1 = (): string => join(dir, 'c1.img')
const c2 = (): string => join(dir, 'c2.img')

before(async () => {
  dir = await tempDir('serve')
  state = join(dir, 'state')
  src = join(dir, 'src.img')
  await fsp.writeFile(src, randomBytes(SIZE))
  await clonectlOk(state, ['group', 'create', 'g', '--source', src])
  await clonectlOk(state, ['clone', 'add', 'g', 'c1', '--path', c1(), '--create'])
  await clonectlOk(state, ['clone', 'add', 'g', 'c2', '--path', c2(), '--create'])
})

after(async () => {
  if (served) await served.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const t0 = Date.now()
  for (;;) {
    const v = await fn()
    if (v !== undefined) return v
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

const clone = async (name: string): Promise<{state: string; dirtyExtents: number}> => {
  const s = await statusJson(state, 'g')
  const c = s.clones.find((x) => x.name === name)
  assert.ok(c, `clone ${name} in status`)
  return c
}

describe('clonectl serve with real clients', () => {
  before(() => needTool(needClients))
  test('given a group, serve starts and nbdinfo reports the size', async () => {
    served = await startServe(state, 'g')
    const r = await runOk('nbdinfo', ['--json', served.uri])
    const e = (JSON.parse(r.stdout) as {exports: Array<Record<string, unknown>>}).exports[0]
    assert.equal(e['export-size'], SIZE)
    assert.equal(e.can_flush, true)
    assert.equal(e.can_fua, true)
    assert.equal(e.is_read_only, false)
  })

  test('qemu-io writes patterns and reads them back', async () => {
    const r = await runOk('qemu-io', [
      '-f', 'raw', served!.uri,
      '-c', 'write -P 0xa5 0 1M',
      '-c', 'write -P 0x5a -f 3M 192k',
      '-c', 'write -z 5M 64k',
      '-c', 'read -P 0xa5 0 1M',
      '-c', 'read -P 0x5a 3M 192k',
      '-c', 'read -P 0 5M 64k',
      '-c', 'flush',
    ])
    assert.doesNotMatch(r.stdout, /verification failed/)
    const head = await fsp.readFile(src)
    assert.ok(head.subarray(0, MiB).every((b) => b === 0xa5))
  })

  test('nbdcopy in and out: equal', async () => {
    const input = join(dir, 'in.img')
    const output = join(dir, 'out.img')
    await fsp.writeFile(input, randomBytes(SIZE))
    await runOk('nbdcopy', [input, served!.uri])
    await runOk('nbdcopy', [served!.uri, output])
    assert.ok(await sameContent(input, output))
    assert.ok(await sameContent(input, src))
    await fsp.rm(input)
    await fsp.rm(output)
  })

  test('given c1 synchronized, host writes are mirrored: c1 equals the source after a fracture from another shell', async () => {
    assert.equal((await clone('c1')).state, 'synchronized')
    await runOk('qemu-io', ['-f', 'raw', served!.uri, '-c', 'write -P 0x31 7M 300k', '-c', 'write -P 0x32 40M 4k'])
    const f = await clonectlOk(state, ['clone', 'fracture', 'g', 'c1'])
    assert.match(f.stdout, /Fractured clone c1/)
    assert.equal((await clone('c1')).state, 'fractured')
    assert.ok(await sameContent(src, c1()), 'c1 == source after the fracture')
  })

  test('given c1 fractured, host writes are recorded in its map; clone sync from another shell makes it equal', async () => {
    const before = (await clone('c1')).dirtyExtents
    assert.equal(before, 0)
    await runOk('qemu-io', ['-f', 'raw', served!.uri, '-c', 'write -P 0x41 9M 1M', '-c', 'write -P 0x42 60M 4k'])
    const after = await clone('c1')
    assert.equal(after.state, 'fractured')
    assert.ok(after.dirtyExtents > 0, `dirtyExtents ${after.dirtyExtents}`)
    assert.equal(after.dirtyExtents, 16 + 1, 'one bit per 64 KiB extent written')
    assert.equal(await sameContent(src, c1()), false)
    await clonectlOk(state, ['clone', 'sync', 'g', 'c1'])
    assert.ok(await sameContent(src, c1()), 'c1 == source after the sync')
    assert.equal((await clone('c1')).dirtyExtents, 0)
  })

  test('status from another shell names the server and its socket', async () => {
    const s = (await statusJson(state, 'g')) as unknown as {server?: {pid: number; nbdSocket: string}; lockedBy?: {pid: number}}
    assert.equal(s.server?.pid, served!.proc.pid)
    assert.equal(s.server?.nbdSocket, served!.socket)
    const human = await clonectlOk(state, ['status', 'g'])
    assert.match(human.stdout, /served by pid \d+/)
  })

  test('a second serve of the same group fails fast with exit 4 (lock held)', async () => {
    const r = await clonectl(state, ['serve', 'g'], {timeoutMs: 20_000})
    assert.equal(r.code, 4, r.stderr)
    assert.match(r.stderr, /locked by pid/)
    assert.ok(r.ms < 10_000, `took ${r.ms} ms`)
    // The first server is unharmed.
    await runOk('qemu-io', ['-f', 'raw', served!.uri, '-c', 'read -P 0x41 9M 1M'])
  })

  test('fio randrw --verify=crc32c while c2 is fractured and synced from another shell: fio goes on writing after the fracture, ends cleanly, and its data verifies', async () => {
    assert.equal((await clone('c2')).state, 'synchronized')
    const fio = fioNbd(served!.uri, ['--rw=randrw', '--bs=4k', '--iodepth=16', `--size=${SIZE}`, '--verify=crc32c', '--verify_fatal=1', '--randseed=1'])
    // fio's jobs are connected (it first connects once to read the size, then once per job).
    await waitFor('fio to connect', async () => (((await statusJson(state, 'g')) as {server?: {connections: number}}).server?.connections ?? 0) > 0 || undefined)
    await clonectlOk(state, ['clone', 'fracture', 'g', 'c2'])
    // fio keeps writing after the fracture: only its writes can mark c2's delta map, and more
    // extents than the 16 writes it may have had in flight when the fracture took place means
    // it issued new ones afterwards (a fio that died at the fracture never gets there).
    await waitFor('fio\'s writes after the fracture to mark c2', async () => ((await clone('c2')).dirtyExtents > 32 ? true : undefined))
    await clonectlOk(state, ['clone', 'sync', 'g', 'c2'])
    const r = await fio
    assert.equal(r.code, 0, `fio exit status; ${r.stderr}`)
    assert.equal(r.errors, 0, r.stderr)
    assert.ok(r.ioBytes.read + r.ioBytes.write >= SIZE, `fio did all its I/O (${r.ioBytes.read} read + ${r.ioBytes.write} written of ${SIZE})`)
    // What fio wrote across the fracture and the sync reads back as written.
    const again = await fioNbd(served!.uri, ['--rw=randrw', '--bs=4k', '--iodepth=16', `--size=${SIZE}`, '--verify=crc32c', '--verify_fatal=1', '--randseed=1', '--verify_only'])
    assert.equal(again.errors, 0, again.stderr)
    // Whatever fio did, the synced clone is equal once fractured.
    await clonectlOk(state, ['clone', 'fracture', 'g', 'c2'])
    assert.ok(await sameContent(src, c2()), 'c2 == source')
  })

  test('fio --verify during a protected restore from c1 (another shell, control socket): no errors, c1 unchanged, writes kept', async () => {
    // c1 is the point in time to go back to; the host then overwrites everything.
    await clonectlOk(state, ['clone', 'fracture', 'g', 'c1'])
    const c1Sum = await sha256File(c1())
    const rnd = join(dir, 'rnd.img')
    await fsp.writeFile(rnd, randomBytes(SIZE))
    await runOk('nbdcopy', ['--flush', rnd, served!.uri])
    await fsp.rm(rnd)
    assert.equal((await clone('c1')).dirtyExtents, SIZE / 65536)
    // A slow restore (16 MiB/s: about 4 s for 64 MiB), started from another shell.
    const restore = clonectl(state, ['restore', 'g', 'c1', '--yes', '--rate', '16M'], {timeoutMs: 120_000})
    await waitFor('the restore to start', async () => ((await statusJson(state, 'g')).operation ? true : undefined))
    // Every write fio makes from now on is kept by the restore (P); fio checks its own data.
    const fio = await fioNbd(served!.uri, ['--rw=randrw', '--bs=4k', '--iodepth=16', `--size=${SIZE}`, '--verify=crc32c', '--verify_fatal=1', '--randseed=7'])
    assert.equal(fio.errors, 0, fio.stderr)
    const r = await restore
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /Completed protected restore of group g from clone c1/)
    // After the restore ends, fio's writes are still there.
    const again = await fioNbd(served!.uri, ['--rw=randrw', '--bs=4k', '--iodepth=16', `--size=${SIZE}`, '--verify=crc32c', '--verify_fatal=1', '--randseed=7', '--verify_only'])
    assert.equal(again.errors, 0, again.stderr)
    assert.equal(await sha256File(c1()), c1Sum, 'c1 is bit-identical')
    assert.equal((await clone('c1')).state, 'fractured')
    // Every difference between the source and c1 is one the host wrote during the restore.
    const v = await clonectl(state, ['verify', 'g', 'c1'])
    assert.equal(v.code, 0, v.stdout + v.stderr)
  })

  test('given serve running, SIGTERM exits 0 and the state is saved', async () => {
    await runOk('qemu-io', ['-f', 'raw', served!.uri, '-c', 'write -P 0x77 1M 64k'])
    const dirtyBefore = (await clone('c2')).dirtyExtents
    assert.ok(dirtyBefore > 0)
    // A client that stays connected must not keep serve from stopping.
    const idle = await NbdTestClient.connect(served!.socket)
    const exit = await served!.stop('SIGTERM')
    idle.destroy()
    served = undefined
    assert.deepEqual(exit, {code: 0, signal: null})
    const s = (await statusJson(state, 'g')) as unknown as {server?: unknown; lockedBy?: unknown; clones: Array<{name: string; dirtyExtents: number}>}
    assert.equal(s.server, undefined)
    assert.equal(s.lockedBy, undefined)
    assert.equal(s.clones.find((c) => c.name === 'c2')?.dirtyExtents, dirtyBefore)
    // Offline now: a sync runs in its own process and finds the maps as serve left them.
    await clonectlOk(state, ['clone', 'sync', 'g', 'c2'])
    await clonectlOk(state, ['clone', 'fracture', 'g', 'c2'])
    assert.ok(await sameContent(src, c2()))
  })
})

describe('clonectl serve on a 1 GiB sparse group: restore latency and resume at start', () => {
  before(() => needTool(needClients))
  const BIG = GiB
  let bigSrc: string
  let bigClone: string
  let cloneSum: string
  let big: Served | undefined
  let restoreCmd: ReturnType<typeof clonectl> | undefined
  const spots = [0, 100 * MiB, 333 * MiB, 512 * MiB, BIG - MiB]

  after(async () => {
    if (big) await big.stop('SIGKILL')
  })

  test('given a 1 GiB sparse source and a fractured clone, the first read after a restore starts is answered quickly', async () => {
    bigSrc = join(dir, 'big.img')
    bigClone = join(dir, 'big-c.img')
    await fsp.writeFile(bigSrc, '')
    await fsp.truncate(bigSrc, BIG)
    await clonectlOk(state, ['group', 'create', 'big', '--source', bigSrc, '--extent-size', '1M'])
    await clonectlOk(state, ['clone', 'add', 'big', 'c', '--path', bigClone, '--create'])
    big = await startServe(state, 'big')
    // The clone's point in time: a pattern at a few spots (mirrored), then fractured.
    await runOk('qemu-io', ['-f', 'raw', big.uri, ...spots.flatMap((o) => ['-c', `write -P 0xc1 ${o} 1M`])])
    await clonectlOk(state, ['clone', 'fracture', 'big', 'c'])
    cloneSum = await sha256File(bigClone)
    // The host then changes everything: every extent differs from the clone's point of view.
    await runOk('qemu-io', ['-f', 'raw', big.uri, '-c', `write -z 0 ${BIG}`, ...spots.flatMap((o) => ['-c', `write -P 0xd2 ${o} 1M`])])
    assert.equal((await statusJson(state, 'big')).clones[0].dirtyExtents, BIG / MiB)

    const t0 = performance.now()
    restoreCmd = clonectl(state, ['restore', 'big', 'c', '--yes', '--rate', '1M'], {timeoutMs: 120_000})
    await waitFor('the restore to start', async () => ((await statusJson(state, 'big')).operation ? true : undefined), 60_000)
    const started = performance.now()
    // The host attaches once the restore has started (a restore refuses while one is attached).
    const client = await NbdTestClient.connect(big.socket)
    // First read: an extent the sync engine has not reached (COD from the clone).
    const r0 = performance.now()
    const data = await client.read(512 * MiB, 4096)
    const firstRead = performance.now() - r0
    assert.ok(data.every((b) => b === 0xc1), 'the read returns the clone data')
    const r1 = performance.now()
    await client.read(700 * MiB, 65536)
    const secondRead = performance.now() - r1
    console.log(
      `1 GiB restore: running ${(started - t0).toFixed(0)} ms after \`restore\` was spawned; first read (COD of one 1 MiB extent) ${firstRead.toFixed(1)} ms; another read ${secondRead.toFixed(1)} ms`,
    )
    client.destroy()
  })

  test('given an interrupted restore, serve resumes it in the background and serves at once', async () => {
    // The restore command above runs at 1 MiB/s; kill the server under it instead (SIGKILL).
    await big!.stop('SIGKILL')
    big = undefined
    // The restore command loses its server and says so (non-zero); the restore stays recorded.
    const r = await restoreCmd!
    assert.notEqual(r.code, 0)
    const s0 = await statusJson(state, 'big')
    assert.equal((s0.operation as {kind?: string} | undefined)?.kind, 'restore')
    const t0 = performance.now()
    big = await startServe(state, 'big')
    const client = await NbdTestClient.connect(big.socket)
    const data = await client.read(BIG - MiB, 4096)
    const ms = performance.now() - t0
    assert.ok(data.every((b) => b === 0xc1))
    console.log(`serve with an interrupted 1 GiB restore: first read answered ${ms.toFixed(0)} ms after spawning serve`)
    // A host write during the resumed restore is kept.
    await client.write(100 * MiB, Buffer.alloc(4096, 0xee), true)
    client.destroy()
    await waitFor('the resumed restore to complete', async () => ((await statusJson(state, 'big')).operation ? undefined : true), 120_000)
    assert.equal(await sha256File(bigClone), cloneSum, 'the clone is bit-identical')
    const all = await fsp.readFile(bigSrc)
    const cl = await fsp.readFile(bigClone)
    // The source is the clone, except the 4 KiB the host wrote during the resumed restore.
    assert.ok(all.subarray(100 * MiB, 100 * MiB + 4096).every((b) => b === 0xee))
    cl.fill(0xee, 100 * MiB, 100 * MiB + 4096)
    assert.ok(all.equals(cl), 'source == clone + the host write')
    const exit = await big.stop('SIGTERM')
    big = undefined
    assert.equal(exit.code, 0)
  })
})

void Cmd
void run
