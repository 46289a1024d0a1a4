/**
 * README promises that no other test tried to break ("a promise in the README is a test"):
 * each test quotes the sentence it holds clonectl to, then tries to make it false.
 *
 * - "clone add --create refuses to overwrite an existing file" (What clonectl never does).
 * - "group destroy and clone remove delete only its own state"; group destroy "Refuses while
 *   the group has clones unless --force" (Commands).
 * - restore: "The other clones are fractured first" (Commands), so they stay point-in-time
 *   copies and their next sync brings them up to date.
 * - "a full disk" (bad input): a clone on a full file system stops the sync with exit 8
 *   naming the clone, the clone out-of-sync with its map intact; with room again, the next
 *   sync finishes it. The source is untouched.
 * - drill: "removes its scratch directory on every failure unless --keep is given"; --size
 *   "in whole MiB".
 * - serve: "SIGTERM/SIGINT stop accepting, drain, flush, persist and exit 0"; "--read-only
 *   Refuse host writes (EPERM)".
 * - a damaged group: "`status GROUP` on it exits 7. `group create` and `clone add` warn that
 *   its volumes cannot be checked and go on. `group destroy GROUP --force` removes a damaged
 *   group's state (never its volumes); a left-over P file still needs `--discard-restore`."
 */
import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, cmp, isRoot, MiB, pwrite, randomImage, sha256, tempDir} from '../helpers/cli.js'
import {NbdTestClient, startServe} from '../helpers/serve.js'

let dir: string
let cli: Cli
const mounts: string[] = []
const needRoot = isRoot ? false : 'needs root (mount a tmpfs)'

before(async () => {
  dir = await tempDir('promises')
  cli = new Cli(join(dir, 'state'))
})
after(async () => {
  for (const m of mounts.reverse()) spawnSync('umount', [m], {stdio: 'ignore'})
  await fsp.rm(dir, {recursive: true, force: true})
})

/** A group of an 8 MiB random source; `path(c)` is where clone c's image goes. */
async function group(name: string, size = 8 * MiB): Promise<{src: string; path: (c: string) => string}> {
  const src = join(dir, `${name}-src.img`)
  await randomImage(src, size, name.length + 3)
  await cli.ok(['group', 'create', name, '--source', src, '--extent-size', '64K'])
  return {src, path: (c) => join(dir, `${name}-${c}.img`)}
}

/** What must not change about a volume: its bytes, size and modification time. */
async function snapshot(path: string): Promise<{sha: string; size: number; mtimeMs: number}> {
  const st = await fsp.stat(path)
  return {sha: await sha256(path), size: st.size, mtimeMs: st.mtimeMs}
}

describe('clonectl never destroys volume data', () => {
  test('given an existing file, when clone add --create names it, then it is refused (exit 5) naming it, and the file is neither overwritten nor removed', async () => {
    const {path} = await group('excl')
    const someones = path('someones')
    await randomImage(someones, 8 * MiB, 99)
    const before = await snapshot(someones)
    const r = await cli.run(['clone', 'add', 'excl', 'c', '--path', someones, '--create'])
    assert.equal(r.code, 5, r.stderr)
    assert.match(r.stderr, new RegExp(`${someones} already exists; --create makes a new image and never overwrites one`))
    assert.deepEqual(await snapshot(someones), before, 'the file is untouched (and still there)')
    assert.deepEqual((await cli.status('excl')).clones, [], 'no clone was added')
  })

  test('given a group with a synchronized and a fractured clone, when a clone is removed and the group destroyed, then only state goes: every volume keeps its bytes and mtime', async () => {
    const {src, path} = await group('keep')
    await cli.ok(['clone', 'add', 'keep', 'a', '--path', path('a'), '--create'])
    await cli.ok(['clone', 'add', 'keep', 'b', '--path', path('b'), '--create'])
    await cli.ok(['clone', 'fracture', 'keep', 'b'])
    const vols = [src, path('a'), path('b')]
    const before = await Promise.all(vols.map(snapshot))

    // Clones exist: destroy without --force is refused, and removes nothing.
    const refused = await cli.run(['group', 'destroy', 'keep', '--yes'])
    assert.equal(refused.code, 5, refused.stderr)
    assert.match(refused.stderr, /group keep still has 2 clone\(s\): a, b/)
    assert.deepEqual((await cli.status('keep')).clones.map((c: {name: string}) => c.name), ['a', 'b'], 'the group is intact')

    await cli.ok(['clone', 'remove', 'keep', 'a', '--yes'])
    assert.deepEqual(await Promise.all(vols.map(snapshot)), before, 'clone remove touched no volume')
    await cli.ok(['group', 'destroy', 'keep', '--force', '--yes'])
    assert.deepEqual(await Promise.all(vols.map(snapshot)), before, 'group destroy touched no volume')
    assert.equal((await cli.run(['status', 'keep'])).code, 3, 'the group is gone')
  })
})

describe('a restore fractures the other clones first', () => {
  test('given clone p fractured and clone m mirrored, when the source is restored from p, then m is fractured, not written, and its next sync makes it equal to the restored source', async () => {
    const {src, path} = await group('oth')
    await cli.ok(['clone', 'add', 'oth', 'p', '--path', path('p'), '--create'])
    await cli.ok(['clone', 'add', 'oth', 'm', '--path', path('m'), '--create'])
    await cli.ok(['clone', 'fracture', 'oth', 'p'])
    // The source changed after p's point in time (behind clonectl: the restore compares every extent).
    await pwrite(src, 2 * MiB, Buffer.alloc(MiB, 0x6d))
    const m = await snapshot(path('m'))

    await cli.ok(['restore', 'oth', 'p', '--yes'])
    assert.ok(cmp(src, path('p')).same, 'the source is p again')
    const s = await cli.status('oth')
    const mState = s.clones.find((c: {name: string}) => c.name === 'm')
    assert.equal(mState.state, 'fractured', 'm stopped mirroring before the source changed under it')
    assert.equal((await snapshot(path('m'))).sha, m.sha, 'the restore wrote nothing to m')
    assert.ok(mState.dirtyExtents > 0, "m's map records that the source changed")

    await cli.ok(['clone', 'sync', 'oth', 'm'])
    assert.ok(cmp(src, path('m')).same, 'its next sync brings m up to date')
  })
})

describe('a full disk loses nothing', () => {
  test('given a clone image on a file system with room for half of it, when it syncs, then exit 8 names the clone and the full disk, the clone is out-of-sync with its map intact and the source untouched; with room again the next sync finishes it', {skip: needRoot}, async () => {
    const {src} = await group('full')
    const mnt = join(dir, 'full-mnt')
    await fsp.mkdir(mnt)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mnt])
    mounts.push(mnt)
    const image = join(mnt, 'c.img')
    await cli.ok(['clone', 'add', 'full', 'c', '--path', image, '--create', '--no-sync'])
    const source = await snapshot(src)

    const r = await cli.run(['clone', 'sync', 'full', 'c'])
    assert.equal(r.code, 8, r.stderr)
    assert.match(r.stderr, new RegExp(`no space left on device writing ${image}`))
    assert.doesNotMatch(r.stderr, /a bug in clonectl/)
    const s = await cli.status('full')
    assert.equal(s.clones[0].state, 'out-of-sync')
    assert.equal(s.operation, undefined, 'the sync stopped cleanly')
    const left = s.clones[0].dirtyExtents
    assert.ok(left > 0 && left < 128, `the map kept its progress: ${left} of 128 extents left`)
    assert.deepEqual(await snapshot(src), source, 'the source is untouched')

    execFileSync('mount', ['-o', 'remount,size=16m', mnt])
    const out = await cli.json(['clone', 'sync', 'full', 'c'])
    assert.equal(out.completed, true)
    assert.ok(out.totalExtents <= left, `only what was left is copied (${out.totalExtents} of ${left})`)
    assert.ok(cmp(src, image).same, 'the clone equals the source')
  })
})

describe('drill scratch directories and sizes', () => {
  const scratch = async (): Promise<string[]> => (await fsp.readdir(dir)).filter((n) => n.startsWith('clonectl-drill'))

  test('--keep keeps the scratch directory, on success (named in the report) and on failure', async () => {
    const j = await cli.json(['drill', '--size', '16M', '--keep'], 0, {env: {TMPDIR: dir}})
    assert.equal(j.kept, true)
    assert.ok(j.dir, 'the report names the directory')
    assert.ok((await fsp.readdir(j.dir)).includes('golden.img'), 'its scratch images are there')
    await fsp.rm(j.dir, {recursive: true})

    const bin = join(dir, 'fakebin')
    await fsp.mkdir(bin, {recursive: true})
    await fsp.writeFile(join(bin, 'mke2fs'), '#!/bin/sh\necho "mke2fs: planted failure" >&2\nexit 1\n', {mode: 0o755})
    const failed = await cli.json(['drill', '--size', '16M', '--keep'], 10, {env: {TMPDIR: dir, PATH: `${bin}:${process.env.PATH}`}})
    assert.match(failed.error.message, /planted failure/)
    const left = await scratch()
    assert.equal(left.length, 1, 'the failed drill kept its scratch directory')
    await fsp.rm(join(dir, left[0]!), {recursive: true})
  })

  test('a --size that is not whole MiB is refused up front (exit 2), and no scratch file is made', async () => {
    const j = await cli.json(['drill', '--size', '20000K'], 2, {env: {TMPDIR: dir}})
    assert.match(j.error.message, /not whole MiB/)
    assert.deepEqual(await scratch(), [])
  })
})

describe('serve stops cleanly on SIGINT as on SIGTERM', () => {
  test('given serve mirroring to a clone, when it gets SIGINT, then it exits 0, the group is free, and the clone is still synchronized', async () => {
    const {path} = await group('sint')
    await cli.ok(['clone', 'add', 'sint', 'c', '--path', path('c'), '--create'])
    const served = await startServe(cli.stateDir, 'sint')
    const exit = await served.stop('SIGINT')
    assert.deepEqual(exit, {code: 0, signal: null}, served.stderr())
    const s = await cli.status('sint')
    assert.equal(s.lockedBy, undefined, 'the lock is released')
    assert.equal(s.server, undefined)
    assert.equal(s.clones[0].state, 'synchronized')
    await cli.ok(['clone', 'fracture', 'sint', 'c'])
  })
})

describe('serve --read-only', () => {
  test('given serve --read-only, when a host writes, then the write fails with EPERM and the source is unchanged; reads work', async () => {
    const {src} = await group('ro')
    const before = await snapshot(src)
    const served = await startServe(cli.stateDir, 'ro', ['--read-only'])
    const client = await NbdTestClient.connect(served.socket)
    try {
      await assert.rejects(client.write(0, Buffer.alloc(4096, 0xee)), (e: {nbdError?: number}) => e.nbdError === 1, 'EPERM')
      const want = (await fsp.readFile(src)).subarray(0, 4096)
      assert.ok((await client.read(0, 4096)).equals(want))
    } finally {
      await client.disconnect()
      await served.stop()
    }
    assert.equal((await snapshot(src)).sha, before.sha, 'the source is unchanged')
  })
})

describe('a damaged group.json', () => {
  test('given a group whose group.json is damaged, then status GROUP exits 7 naming it, clone add elsewhere warns and goes on; with a protected restore left (P), destroy --force is refused until --discard-restore, and no volume is touched', async () => {
    const {src, path} = await group('dam')
    await cli.ok(['clone', 'add', 'dam', 'c', '--path', path('c'), '--create'])
    await cli.ok(['clone', 'fracture', 'dam', 'c'])
    await pwrite(src, 0, Buffer.alloc(2 * MiB, 0x11))
    const bg = cli.spawnBackground(['restore', 'dam', 'c', '--yes', '--rate', '256K'])
    await bg.until(async () => (await cli.status('dam')).operation?.kind === 'restore', 'the restore is recorded')
    bg.kill('SIGKILL')
    await bg.done
    const groupDir = join(cli.stateDir, 'groups', 'dam')
    assert.ok((await fsp.readdir(groupDir)).includes('restore.pmap'), 'P is there')
    const file = join(groupDir, 'group.json')
    await fsp.writeFile(file, '{"formatVersion": 1, "name": ')
    const vols = [src, path('c')]
    const before = await Promise.all(vols.map(snapshot))

    const st = await cli.run(['status', 'dam'])
    assert.equal(st.code, 7, st.stderr)
    assert.match(st.stderr, new RegExp(file))

    const other = await group('dam2')
    const added = await cli.ok(['clone', 'add', 'dam2', 'c', '--path', other.path('c'), '--create'])
    assert.match(added.stderr, /group dam is damaged .*its volumes cannot be checked/)

    const refused = await cli.run(['group', 'destroy', 'dam', '--force', '--yes'])
    assert.equal(refused.code, 6, refused.stderr)
    assert.match(refused.stderr, /partly restored/)
    assert.match(refused.stderr, /--discard-restore/)
    assert.ok((await fsp.readdir(groupDir)).includes('restore.pmap'), 'refused: P is kept')
    await cli.ok(['group', 'destroy', 'dam', '--force', '--discard-restore', '--yes'])
    await assert.rejects(fsp.access(groupDir), 'its state is gone')
    assert.deepEqual(await Promise.all(vols.map(snapshot)), before, 'no volume was touched')
  })
})
