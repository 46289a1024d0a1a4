import assert from 'node:assert/strict'
import {chmod, chown, mkdir, mkdtemp, readdir, readFile, rename, rm, stat, symlink, utimes, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, test} from 'node:test'
import {CorruptStateError, ExitCode, LockHeldError, NotFoundError, RefusedError, StateError, UntrustedStateError, UsageError, VolumeIoError} from '../../src/errors/errors.js'
import {ForwardSync} from '../../src/engine/ForwardSync.js'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {createGroup, destroyGroup} from '../../src/group/GroupAdmin.js'
import {buildGroup, clonePath, fillPattern, SRC} from '../helpers/memGroup.js'
import {MemoryFs} from '../support/MemoryFs.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {type GroupRecord, parseGroupRecord} from '../../src/store/GroupRecord.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {ensureStateDir, resolveStateDir, validateName} from '../../src/store/stateDir.js'

const temps: string[] = []
after(async () => {
  for (const d of temps) await rm(d, {recursive: true, force: true})
})

async function tempStore(): Promise<GroupStore> {
  const dir = await mkdtemp(join(tmpdir(), 'clonectl-store-'))
  temps.push(dir)
  const state = join(dir, 'state')
  await ensureStateDir(nodeFs, state)
  return new GroupStore(nodeFs, state)
}

function record(name: string, clones: string[] = ['c1']): GroupRecord {
  return {
    formatVersion: 1,
    name,
    extentSize: 65536,
    createdAt: '2026-11-23T05:40:00.000Z',
    source: {path: `/vol/${name}-src.img`, fingerprint: {kind: 'file', size: 1 << 20, dev: 2049, ino: 12, mtimeMs: 1.5, ctimeMs: 2.5}},
    clones: clones.map((c) => ({
      name: c,
      volume: {path: `/vol/${name}-${c}.img`, fingerprint: {kind: 'file', size: 1 << 20, dev: 2049, ino: 13}},
      state: 'fractured',
      mapFile: `clone-${c}.map`,
      createdAt: '2026-11-23T05:41:00.000Z',
      lastFractureAt: '2026-11-23T05:42:00.000Z',
      trusted: true,
    })),
  }
}

/** The CorruptStateError of parsing `doc` (a JSON value or raw text) as /x/group.json. */
function corruptError(doc: unknown): CorruptStateError {
  const text = typeof doc === 'string' ? doc : JSON.stringify(doc)
  try {
    parseGroupRecord(text, '/x/group.json')
  } catch (error) {
    assert.ok(error instanceof CorruptStateError, `expected CorruptStateError, got ${String(error)}`)
    assert.equal(error.exitCode, ExitCode.corrupt)
    assert.match(error.message, /^\/x\/group\.json: /)
    return error
  }
  assert.fail('parsed without error')
}

test('given a new group, when created, saved and loaded, then the record round-trips', async () => {
  const store = await tempStore()
  const r = record('db1', ['c1', 'c2'])
  await store.create(r)
  assert.deepEqual(await store.load('db1'), r)
  assert.equal(await store.exists('db1'), true)
  assert.equal(await store.exists('db2'), false)

  r.clones[0]!.state = 'synchronized'
  r.clones[1]!.trusted = false
  r.clones[1]!.untrustedReason = 'clone-changed'
  r.operation = {id: '0b6f5a8e-7d52-4c55-9a8f-2f1f3c1e9d10', kind: 'restore', clone: 'c2', protected: true, startedAt: '2026-11-23T06:00:00.000Z', command: 'clonectl restore db1 c2', pid: 4242, totalExtents: 16}
  await store.save(r)
  assert.deepEqual(await store.load('db1'), r)

  const mode = (await stat(store.groupDir('db1'))).mode & 0o777
  assert.equal(mode & 0o077, 0, `group dir mode ${mode.toString(8)} must not be group/other accessible`)
  const text = await readFile(store.groupFile('db1'), 'utf8')
  assert.match(text, /^{\n {2}"formatVersion": 1,/, 'pretty JSON')
  assert.equal(store.mapPath('db1', 'clone-c1.map'), join(store.groupDir('db1'), 'clone-c1.map'))
})

test('given many saves, then no temp file is left beside group.json', async () => {
  const store = await tempStore()
  const r = record('db1')
  await store.create(r)
  for (let i = 0; i < 20; i++) {
    r.clones[0]!.lastSyncAt = new Date(Date.UTC(2026, 10, 23, 6, 0, i)).toISOString()
    await store.save(r)
  }
  await Promise.all([store.save(r), store.save(r), store.save(r)])
  assert.deepEqual(await readdir(store.groupDir('db1')), ['group.json'])
  assert.equal((await store.load('db1')).clones[0]!.lastSyncAt, '2026-11-23T06:00:19.000Z')
})

test('given a group created and saved on a MemoryFs, when power is lost, then the last save survives', async () => {
  const fs = new MemoryFs()
  fs.seedDir('/state/groups') // a state directory made durably before (the group's own directory is the point here)
  await ensureStateDir(fs, '/state')
  const store = new GroupStore(fs, '/state')
  const r = record('db1')
  await store.create(r)
  assert.deepEqual(await new GroupStore(fs.crash({kind: 'durable'}), '/state').load('db1'), r)
  r.clones[0]!.state = 'out-of-sync'
  await store.save(r)
  assert.equal((await new GroupStore(fs.crash({kind: 'durable'}), '/state').load('db1')).clones[0]!.state, 'out-of-sync')
})

test('given a fresh machine (no state directory yet), when the first group is created and power is lost, then the group survives', async () => {
  const fs = new MemoryFs()
  fs.seedDir('/var/lib') // the parent exists durably; the state directory does not exist yet
  await ensureStateDir(fs, '/var/lib/clonectl')
  const store = new GroupStore(fs, '/var/lib/clonectl')
  const r = record('db1')
  await store.create(r)
  assert.deepEqual(await new GroupStore(fs.crash({kind: 'durable'}), '/var/lib/clonectl').load('db1'), r, 'the new state directory and groups/ must be made durable by the first create')
})

test('given group.json that is not JSON, then load is a CorruptStateError naming the file', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  await writeFile(store.groupFile('db1'), '{"formatVersion": 1, "name": "db1", ')
  await assert.rejects(store.load('db1'), (e: unknown) => {
    assert.ok(e instanceof CorruptStateError)
    assert.ok(e.message.startsWith(`${store.groupFile('db1')}: not valid JSON`), e.message)
    assert.ok(e.fix)
    return true
  })
  corruptError('')
  corruptError('[]')
})

test('given another formatVersion, then it is a CorruptStateError naming the file and the version', () => {
  assert.match(corruptError({...record('db1'), formatVersion: 2}).message, /formatVersion 2 is not supported \(this clonectl reads 1\)/)
  assert.match(corruptError({...record('db1'), formatVersion: '1'}).message, /field formatVersion must be 1, found "1"/)
  const {formatVersion: _, ...noVersion} = record('db1')
  assert.match(corruptError(noVersion).message, /field formatVersion must be 1, found missing/)
})

test('given a missing or mistyped field, then the error names the file and the field', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  const doc = JSON.parse(await readFile(store.groupFile('db1'), 'utf8')) as {clones: Array<Record<string, unknown>>}
  delete doc.clones[0]!.state
  await writeFile(store.groupFile('db1'), JSON.stringify(doc))
  await assert.rejects(store.load('db1'), (e: unknown) => {
    assert.ok(e instanceof CorruptStateError)
    assert.equal(e.message, `${store.groupFile('db1')}: field clones[0].state is missing, not one of synchronizing, synchronized, fractured, out-of-sync, restoring, reverse-syncing`)
    return true
  })

  const cases: Array<[string, (r: Record<string, unknown> & GroupRecord) => void, RegExp]> = [
    ['extentSize missing', (r) => delete (r as Partial<GroupRecord>).extentSize, /field group\.extentSize must be an integer/],
    ['extentSize not a power of 2', (r) => (r.extentSize = 65537), /group\.extentSize 65537 is out of range/],
    ['source missing', (r) => delete (r as Partial<GroupRecord>).source, /field source must be an object, found missing/],
    ['fingerprint kind', (r) => ((r.source.fingerprint as unknown as Record<string, unknown>).kind = 'tape'), /field source\.fingerprint\.kind is "tape"/],
    ['clones not an array', (r) => ((r as Record<string, unknown>).clones = {}), /field clones must be an array/],
    ['trusted not boolean', (r) => ((r.clones[0] as unknown as Record<string, unknown>).trusted = 'yes'), /field clones\[0\]\.trusted must be true or false/],
    ['clone name', (r) => (r.clones[0]!.name = '../x'), /field clones\[0\]\.name "..\/x" is not a valid name/],
    ['duplicate clone', (r) => r.clones.push({...r.clones[0]!}), /clones\[1\]\.name: clone c1 appears twice/],
    ['map file outside the group directory', (r) => (r.clones[0]!.mapFile = '../../etc/passwd'), /field clones\[0\]\.mapFile "..\/..\/etc\/passwd" is not a plain \*\.map file name/],
    ['createdAt not a time', (r) => (r.createdAt = 'yesterday'), /field group\.createdAt must be an ISO 8601 time/],
    ['operation of an unknown clone', (r) => (r.operation = {id: 'x', kind: 'sync', clone: 'zz', startedAt: r.createdAt, command: 'c', pid: 1}), /field operation\.clone "zz" is not a clone of this group/],
    ['operation kind', (r) => (r.operation = {id: 'x', kind: 'copy' as 'sync', clone: 'c1', startedAt: r.createdAt, command: 'c', pid: 1}), /field operation\.kind is "copy"/],
    ['operation pid', (r) => (r.operation = {id: 'x', kind: 'sync', clone: 'c1', startedAt: r.createdAt, command: 'c', pid: 0}), /field operation\.pid must be an integer ≥ 1, found 0/],
  ]
  for (const [what, mutate, expected] of cases) {
    const r = record('db1') as Record<string, unknown> & GroupRecord
    mutate(r)
    assert.match(corruptError(r).message, expected, what)
  }
})

test('given group.json whose name is not its directory, then load is a CorruptStateError', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  await writeFile(store.groupFile('db1'), JSON.stringify(record('db2')))
  await assert.rejects(store.load('db1'), CorruptStateError)
})

test('given an invalid record, then save refuses to write it and the old file stays', async () => {
  const store = await tempStore()
  const r = record('db1')
  await store.create(r)
  const bad = {...r, extentSize: 3}
  await assert.rejects(store.save(bad), /refusing to write an invalid group record: .*field group\.extentSize must be an integer ≥ 4096, found 3/)
  assert.deepEqual(await store.load('db1'), r)
})

test('given no such group, then load is a NotFoundError with the list fix', async () => {
  const store = await tempStore()
  await assert.rejects(store.load('nope'), (e: unknown) => {
    assert.ok(e instanceof NotFoundError)
    assert.equal(e.message, `no clone group named nope in ${store.stateDir}`)
    assert.equal(e.fix, 'list groups with `clonectl group list`')
    return true
  })
})

test('given groups created out of order, then list returns them sorted, skipping strays', async () => {
  const store = await tempStore()
  assert.deepEqual(await store.list(), [])
  assert.deepEqual(await new GroupStore(nodeFs, join(store.stateDir, 'missing')).list(), [])
  for (const n of ['web', 'db2', 'db10', 'Archive']) await store.create(record(n, []))
  await mkdir(join(store.groupsDir, 'empty-dir'))
  await writeFile(join(store.groupsDir, 'stray-file'), '')
  assert.deepEqual(await store.list(), ['Archive', 'db10', 'db2', 'web'])
})

test('given an existing group, then create refuses and leaves it alone', async () => {
  const store = await tempStore()
  const r = record('db1')
  await store.create(r)
  await assert.rejects(store.create(record('db1', ['other'])), (e: unknown) => e instanceof RefusedError && e.exitCode === ExitCode.refused)
  assert.deepEqual(await store.load('db1'), r)
})

test('given a directory left by an interrupted create, then create reuses it; with a foreign file, it refuses', async () => {
  const store = await tempStore()
  await mkdir(store.groupDir('db1'), {mode: 0o700})
  await writeFile(join(store.groupDir('db1'), 'group.json.tmp-123-abcdef'), 'partial')
  await store.create(record('db1'))
  assert.deepEqual(await readdir(store.groupDir('db1')), ['group.json'])

  await mkdir(store.groupDir('db2'), {mode: 0o700})
  await writeFile(join(store.groupDir('db2'), 'notes.txt'), 'mine')
  await assert.rejects(store.create(record('db2')), /holds files clonectl did not make: notes\.txt/)
})

test('given a group with maps and sockets, when destroyed, then its directory is gone; again is a no-op', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  await store.create(record('db2'))
  const dir = store.groupDir('db1')
  for (const n of ['clone-c1.map', 'restore.pmap', 'control.sock', 'nbd.sock', 'clone-c1.map.tmp-1-ab', 'lock.holder.json']) await writeFile(join(dir, n), '')
  // A lock left by a crash, long stale.
  await mkdir(join(dir, 'lock'))
  const old = new Date(Date.now() - 120_000)
  await utimes(join(dir, 'lock'), old, old)
  await store.destroy('db1')
  await assert.rejects(stat(dir), /ENOENT/)
  assert.deepEqual(await store.list(), ['db2'])
  await store.destroy('db1')
  assert.deepEqual(await store.list(), ['db2'])
})

test('given a file clonectl did not make in the group directory, then destroy refuses and removes nothing', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  await writeFile(join(store.groupDir('db1'), 'clone-c1.map'), '')
  await writeFile(join(store.groupDir('db1'), 'important.db'), 'data')
  await assert.rejects(store.destroy('db1'), (e: unknown) => {
    assert.ok(e instanceof RefusedError)
    assert.match(e.message, /holds files clonectl did not make: important\.db; nothing was removed/)
    return true
  })
  assert.deepEqual((await readdir(store.groupDir('db1'))).sort(), ['clone-c1.map', 'group.json', 'important.db'])
})

test('given a group locked by a live process, then destroy refuses', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  const dir = store.groupDir('db1')
  await mkdir(join(dir, 'lock'))
  // pid 1 is always alive (kill(1, 0) is EPERM or success).
  await writeFile(join(dir, 'lock.holder.json'), JSON.stringify({pid: 1, command: 'clonectl serve db1', startedAt: '2026-11-23T05:40:00Z', hostname: (await import('node:os')).hostname()}))
  await assert.rejects(store.destroy('db1'), (e: unknown) => e instanceof LockHeldError && /pid 1 \(clonectl serve db1\)/.test(e.message))
  assert.equal(await store.exists('db1'), true)
})

test('given groups with clones, then allClonePaths lists every source and clone', async () => {
  const store = await tempStore()
  await store.create(record('b', ['x']))
  await store.create(record('a', ['c1', 'c2']))
  assert.deepEqual(await store.allClonePaths(), [
    {group: 'a', clone: '(source)', path: '/vol/a-src.img'},
    {group: 'a', clone: 'c1', path: '/vol/a-c1.img'},
    {group: 'a', clone: 'c2', path: '/vol/a-c2.img'},
    {group: 'b', clone: '(source)', path: '/vol/b-src.img'},
    {group: 'b', clone: 'x', path: '/vol/b-x.img'},
  ])
})

test('names: letters, digits, ".", "_", "-", 1–64 long, starting with a letter or digit', async () => {
  for (const ok of ['a', 'db1', 'DB.prod_2-x', '0', 'x'.repeat(64)]) validateName('group', ok)
  for (const bad of ['', '.', '..', '.hidden', '-x', '_x', 'a/b', 'a b', 'é', 'x'.repeat(65), 'a\nb']) {
    assert.throws(
      () => validateName('clone', bad),
      (e: unknown) => {
        assert.ok(e instanceof UsageError, `${JSON.stringify(bad)} must be refused`)
        assert.ok(e.message.startsWith(`clone name ${JSON.stringify(bad)} is not valid: a clone name is 1 to 64 letters, digits`), e.message)
        assert.equal(e.exitCode, ExitCode.usage)
        return true
      },
    )
  }
  const store = await tempStore()
  assert.throws(() => store.groupDir('../../etc'), UsageError)
  await assert.rejects(store.load('../x'), UsageError)
  await assert.rejects(store.create(record('bad name')), UsageError)
})

test('resolveStateDir: flag, then $CLONECTL_STATE_DIR, then root default, then XDG, then ~/.local/state', () => {
  const env = {CLONECTL_STATE_DIR: '/env/state', XDG_STATE_HOME: '/xdg', HOME: '/home/u'}
  assert.equal(resolveStateDir('/flag/state', env, 1000), '/flag/state')
  assert.equal(resolveStateDir('/flag/state', env, 0), '/flag/state')
  assert.equal(resolveStateDir(undefined, env, 0), '/env/state')
  assert.equal(resolveStateDir(undefined, env, 1000), '/env/state')
  assert.equal(resolveStateDir(undefined, {XDG_STATE_HOME: '/xdg', HOME: '/home/u'}, 0), '/var/lib/clonectl')
  assert.equal(resolveStateDir(undefined, {XDG_STATE_HOME: '/xdg', HOME: '/home/u'}, 1000), '/xdg/clonectl')
  assert.equal(resolveStateDir(undefined, {HOME: '/home/u'}, 1000), '/home/u/.local/state/clonectl')
  assert.equal(resolveStateDir(undefined, {XDG_STATE_HOME: 'relative', HOME: '/home/u'}, 1000), '/home/u/.local/state/clonectl', 'a relative XDG_STATE_HOME is ignored')
  assert.equal(resolveStateDir('', {CLONECTL_STATE_DIR: '', XDG_STATE_HOME: '', HOME: '/home/u'}, 1000), '/home/u/.local/state/clonectl', 'empty means unset')
  assert.equal(resolveStateDir('rel/state', {}, 1000), join(process.cwd(), 'rel/state'), 'made absolute')
})

test('ensureStateDir makes the state directory and groups/ with mode 0700', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'clonectl-state-'))
  temps.push(dir)
  const state = join(dir, 'a', 'state')
  await ensureStateDir(nodeFs, state)
  for (const d of [state, join(state, 'groups')]) assert.equal((await stat(d)).mode & 0o077, 0, `${d} must be 0700`)
  await ensureStateDir(nodeFs, state)
})

// ---------------------------------------------------------------------------------------
// The state directory as a trust boundary; damaged groups; a full state file system;
// volumes that never cross groups (issue 12 items 2, 3, 5, 8, 9).

/** A MemoryFs store with group records written as they are (no volumes needed). */
async function memStore(capacity?: number): Promise<{fs: MemoryFs; store: GroupStore}> {
  const fs = new MemoryFs({capacity})
  await fs.mkdirp('/state/groups')
  return {fs, store: new GroupStore(fs, '/state', {creationLock: false})}
}

test('given a full state file system, when group.json is saved, then exit 8 names the state directory, no temp file stays and the old record is intact', async () => {
  const {fs, store} = await memStore()
  const r = record('db1')
  await store.create(r)
  const before = await fs.readFile(store.groupFile('db1'))
  const full = new MemoryFs({capacity: 0})
  await full.mkdirp('/state/groups/db1')
  const onFull = new GroupStore(full, '/state', {creationLock: false})
  r.clones[0]!.lastSyncAt = '2026-11-23T07:00:00.000Z'
  await assert.rejects(onFull.save(r), (e: unknown) => e instanceof VolumeIoError && e.exitCode === ExitCode.io && e.errno === 'ENOSPC' && e.message.includes('/state') && /no space left/.test(e.message))
  assert.deepEqual(await full.readdir('/state/groups/db1'), [], 'no group.json.tmp-* left behind')
  // And on a store that fills up between two saves: the record on disk is the old one.
  const tight = new MemoryFs({capacity: before.length + 16})
  await tight.mkdirp('/state/groups/db1')
  const tightStore = new GroupStore(tight, '/state', {creationLock: false})
  await tightStore.save(record('db1'))
  const saved = await tight.readFile(tightStore.groupFile('db1'))
  await assert.rejects(tightStore.save(r), VolumeIoError)
  assert.deepEqual(await tight.readFile(tightStore.groupFile('db1')), saved)
  assert.deepEqual(await tight.readdir('/state/groups/db1'), ['group.json'])
})

test('given an empty and a garbage group.json among good groups, then loadAll lists them as damaged (file, reason) and returns the others; allClonePaths skips and reports them', async () => {
  const {fs, store} = await memStore()
  await store.create(record('good'))
  await store.create(record('empty'))
  await store.create(record('garbage'))
  fs.seedFile(store.groupFile('empty'), Buffer.alloc(0))
  fs.seedFile(store.groupFile('garbage'), Buffer.from('{"formatVersion": 1, "na'))
  const {records, damaged} = await store.loadAll()
  assert.deepEqual(records.map((r) => r.name), ['good'])
  assert.deepEqual(damaged.map((d) => [d.name, d.file]), [['empty', store.groupFile('empty')], ['garbage', store.groupFile('garbage')]])
  for (const d of damaged) assert.ok(d.error instanceof CorruptStateError && d.reason.length > 0)
  const reported: string[] = []
  const uses = await store.allClonePaths({except: 'good', onDamaged: (d) => reported.push(d.name)})
  assert.deepEqual(uses, [])
  assert.deepEqual(reported, ['empty', 'garbage'])
  assert.deepEqual((await store.allClonePaths()).map((u) => `${u.group}/${u.clone}`), ['good/(source)', 'good/c1'])
})

test('given a state directory, group directory or file that is a symlink, another user\'s, or writable by others, then it is refused with exit 7 naming the path and the fix', async () => {
  const store = await tempStore()
  await store.create(record('db1'))
  const gdir = store.groupDir('db1')
  const expect7 = (p: RegExp | string, fix: RegExp) => (e: unknown) => e instanceof UntrustedStateError && e.exitCode === ExitCode.corrupt && e.message.includes(String(p)) && fix.test(e.fix ?? '')

  await chmod(gdir, 0o770)
  await assert.rejects(store.load('db1'), expect7(gdir, new RegExp(`chmod 700 ${gdir}`)))
  await chmod(gdir, 0o700)
  await chmod(store.groupFile('db1'), 0o666)
  await assert.rejects(store.load('db1'), expect7(store.groupFile('db1'), /chmod 600/))
  await chmod(store.groupFile('db1'), 0o600)
  await chmod(store.stateDir, 0o707)
  await assert.rejects(ensureStateDir(nodeFs, store.stateDir), expect7(store.stateDir, /chmod 700/))
  await chmod(store.stateDir, 0o700)

  const real = `${store.groupFile('db1')}.real`
  await rename(store.groupFile('db1'), real)
  await symlink(real, store.groupFile('db1'))
  await assert.rejects(store.load('db1'), expect7(store.groupFile('db1'), /symlink/))
  assert.deepEqual(await store.list(), ['db1'], 'still listed, so status shows it damaged')
  const {damaged} = await store.loadAll()
  assert.equal(damaged[0]?.file, store.groupFile('db1'))
  await rm(store.groupFile('db1'))
  await rename(real, store.groupFile('db1'))

  await symlink('/nonexistent-target', join(gdir, 'clone-c1.map'))
  await assert.rejects(store.load('db1'), expect7(join(gdir, 'clone-c1.map'), /symlink/))
  await rm(join(gdir, 'clone-c1.map'))
  await store.load('db1')

  if (process.getuid?.() === 0) {
    await chown(store.groupFile('db1'), 65534, 65534)
    await assert.rejects(store.load('db1'), expect7('uid 65534', /chown/))
    await chown(store.groupFile('db1'), 0, 0)
    await chown(store.stateDir, 65534, 65534)
    await assert.rejects(ensureStateDir(nodeFs, store.stateDir), expect7('uid 65534', /chown/))
    await chown(store.stateDir, 0, 0)
  }
  await store.load('db1')
})

test('given two racing creation-locked sections, then they never overlap', async () => {
  const store = await tempStore()
  let inside = 0
  let maxInside = 0
  const section = async (): Promise<void> => {
    inside++
    maxInside = Math.max(maxInside, inside)
    await new Promise<void>((res) => setImmediate(res))
    inside--
  }
  await Promise.all([1, 2, 3].map(() => store.withCreationLock('test', section)))
  assert.equal(maxInside, 1)
  assert.deepEqual((await readdir(store.stateDir)).sort(), ['groups'], 'the lock leaves nothing behind')
})

test('given group.json edited so one volume is two volumes of some group, when the group is opened, then it is refused naming both uses before any byte is written', async () => {
  const m = await buildGroup({extents: 4, source: fillPattern(4, 4096, (e) => e + 1), clones: ['c1', 'c2']})
  const {ctx, fs} = m
  fs.seedFile('/vol/h.img', fillPattern(4, 4096, () => 0xaa))
  await createGroup(ctx, {name: 'h', sourcePath: '/vol/h.img', extentSize: 4096})
  const hBefore = await fs.readFile('/vol/h.img')
  const original = await ctx.store.load('g')

  // A clone recorded at another group's source: that clone is refused by name, the rest opens.
  const edited = structuredClone(original)
  edited.clones[1]!.volume.path = '/vol/h.img'
  await ctx.store.save(edited)
  const g = await CloneGroup.open(ctx, 'g', {writable: true})
  try {
    const err = g.member('c2').unavailable
    assert.ok(err instanceof RefusedError && err.exitCode === ExitCode.refused, String(err))
    assert.match(err.message, /clone c2 of group g \(\/vol\/h\.img\) is the same volume as the source of group h \(\/vol\/h\.img\)/)
    assert.match(err.fix ?? '', /clonectl clone remove g c2/)
    await assert.rejects(ForwardSync.start(g, {clone: 'c2', full: true, command: 'test'}), RefusedError)
    assert.equal(g.member('c1').unavailable, undefined)
  } finally {
    await g.close()
  }
  assert.deepEqual(await fs.readFile('/vol/h.img'), hBefore, "group h's source is untouched")

  // A clone recorded at its own source, and the source recorded at a clone: nothing opens.
  for (const edit of [(r: GroupRecord) => (r.clones[0]!.volume.path = SRC), (r: GroupRecord) => (r.source.path = clonePath('c2'))]) {
    const bad = structuredClone(original)
    edit(bad)
    await ctx.store.save(bad)
    await assert.rejects(CloneGroup.open(ctx, 'g', {writable: true}), (e: unknown) => e instanceof RefusedError && /the source of group g/.test(e.message) && /group\.json/.test(e.fix ?? ''))
  }
  // Status (no volumes opened) still works, and group destroy is the way out.
  await ctx.store.save(original)
})

test('given an unfinished restore, when the group is destroyed with force alone, then it is refused naming the partly restored source; discardRestore destroys it', async () => {
  const m = await buildGroup({extents: 4, source: fillPattern(4, 4096, (e) => e + 1), clones: ['c1']})
  const {ctx} = m
  const r = await ctx.store.load('g')
  r.operation = {id: '0b6f5a8e-7d52-4c55-9a8f-2f1f3c1e9d10', kind: 'restore', clone: 'c1', protected: true, startedAt: '2026-11-23T06:00:00.000Z', command: 'clonectl restore g c1', pid: 4242}
  await ctx.store.save(r)
  await assert.rejects(destroyGroup(ctx, 'g', {force: true}), (e: unknown) => e instanceof StateError && e.message.includes(SRC) && /partly restored/.test(e.message) && /pre-restore data/.test(e.message) && /--discard-restore/.test(e.fix ?? ''))
  assert.equal(await ctx.store.exists('g'), true)
  await destroyGroup(ctx, 'g', {force: true, discardRestore: true})
  assert.equal(await ctx.store.exists('g'), false)
})
