/**
 * The store: group.json round trip and every way it can be untrustworthy (a
 * CorruptStateError naming the file), the state directory's precedence, names, and the
 * group lock (fail fast naming the holder, --wait, takeover of a dead holder's lock).
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {hostname, tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {setTimeout as sleep} from 'node:timers/promises'
import {after, before, describe, test} from 'node:test'
import {CorruptStateError, LockHeldError, NotFoundError, UsageError} from '../../src/errors/errors.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupLock, type HolderInfo} from '../../src/store/GroupLock.js'
import {type GroupRecord, parseGroupRecord} from '../../src/store/GroupRecord.js'
import {GroupStore} from '../../src/store/GroupStore.js'
import {isValidName, resolveStateDir, ROOT_STATE_DIR, validateName} from '../../src/store/stateDir.js'

let dir: string
let n = 0
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'clonectl-store-'))
})
after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

function record(name: string): GroupRecord {
  const now = new Date().toISOString()
  return {
    formatVersion: 1,
    name,
    extentSize: 65536,
    createdAt: now,
    source: {path: '/srv/src.img', fingerprint: {kind: 'file', size: 1 << 20, dev: 2049, ino: 12, mtimeMs: 1700000000000.5, ctimeMs: 1700000000000.5}},
    clones: [
      {
        name: 'c1',
        volume: {path: '/backup/c1.img', fingerprint: {kind: 'file', size: 1 << 20, dev: 2049, ino: 13, mtimeMs: 1, ctimeMs: 2}},
        state: 'fractured',
        mapFile: 'clone-c1.map',
        createdAt: now,
        lastSyncAt: now,
        lastFractureAt: now,
        trusted: true,
      },
    ],
  }
}

async function newStore(): Promise<GroupStore> {
  const s = new GroupStore(nodeFs, join(dir, `state${n++}`))
  await fsp.mkdir(s.groupsDir, {recursive: true})
  return s
}

async function loadRejects(store: GroupStore, name: string, pattern: RegExp): Promise<void> {
  const file = store.groupFile(name)
  await assert.rejects(store.load(name), (error: unknown) => {
    assert.ok(error instanceof CorruptStateError, `expected CorruptStateError, got ${String(error)}`)
    assert.ok(error.message.includes(file), `message ${JSON.stringify(error.message)} should name ${file}`)
    assert.match(error.message, pattern)
    assert.equal(error.exitCode, 7)
    return true
  })
}

describe('group.json', () => {
  test('create → load round trip; list; allClonePaths; destroy removes only our files', async () => {
    const s = await newStore()
    const r = record('g1')
    await s.create(r)
    assert.deepEqual(await s.load('g1'), r)
    assert.deepEqual(await s.list(), ['g1'])
    assert.deepEqual(await s.allClonePaths(), [
      {group: 'g1', clone: '(source)', path: '/srv/src.img'},
      {group: 'g1', clone: 'c1', path: '/backup/c1.img'},
    ])
    const st = await fsp.stat(s.groupDir('g1'))
    assert.equal(st.mode & 0o777, 0o700, 'group directory is 0700')
    await assert.rejects(s.create(r), /already exists/)
    await s.destroy('g1')
    assert.deepEqual(await s.list(), [])
    await assert.rejects(s.load('g1'), NotFoundError)
  })

  test('corrupt JSON → CorruptStateError naming the file', async () => {
    const s = await newStore()
    await s.create(record('g'))
    await fsp.writeFile(s.groupFile('g'), '{"formatVersion": 1, "name": "g", ')
    await loadRejects(s, 'g', /not valid JSON/)
  })

  test('wrong formatVersion → CorruptStateError naming the file and the version', async () => {
    const s = await newStore()
    await s.create(record('g'))
    await fsp.writeFile(s.groupFile('g'), JSON.stringify({...record('g'), formatVersion: 2}))
    await loadRejects(s, 'g', /formatVersion 2/)
    await fsp.writeFile(s.groupFile('g'), JSON.stringify({...record('g'), formatVersion: undefined}))
    await loadRejects(s, 'g', /formatVersion/)
  })

  test('a bad field → CorruptStateError naming the file and the field', async () => {
    const s = await newStore()
    await s.create(record('g'))
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each case writes what no GroupRecord may hold
    const cases: Array<[(r: Record<string, any>) => void, RegExp]> = [
      [(r) => (r.extentSize = 3000), /extentSize/],
      [(r) => (r.extentSize = 65537 * 2), /extentSize/],
      [(r) => (r.clones[0].state = 'happy'), /clones\[0\]\.state/],
      [(r) => (r.clones[0].mapFile = '../../etc/passwd.map'), /mapFile/],
      [(r) => (r.clones[0].trusted = 'yes'), /trusted/],
      [(r) => (r.source.fingerprint.size = -1), /source\.fingerprint\.size/],
      [(r) => (r.clones = {}), /clones must be an array/],
      [(r) => (r.name = 'other'), /group\.name/],
      [(r) => (r.operation = {id: 'x', kind: 'restore', clone: 'nope', startedAt: new Date().toISOString(), command: 'c', pid: 1}), /operation\.clone/],
      [(r) => r.clones.push({...r.clones[0]}), /appears twice/],
    ]
    for (const [mutate, pattern] of cases) {
      const r = JSON.parse(JSON.stringify(record('g')))
      mutate(r)
      await fsp.writeFile(s.groupFile('g'), JSON.stringify(r))
      await loadRejects(s, 'g', pattern)
    }
    assert.throws(() => parseGroupRecord('[]', '/x/group.json'), /\/x\/group\.json/)
  })

  test('save refuses to write a record it could not read back', async () => {
    const s = await newStore()
    await s.create(record('g'))
    const bad = {...record('g'), extentSize: 1000}
    await assert.rejects(s.save(bad), /invalid group record/)
    assert.deepEqual((await s.load('g')).extentSize, 65536, 'the file was not replaced')
  })

  test('an unknown group is NotFoundError (exit 3)', async () => {
    const s = await newStore()
    await assert.rejects(s.load('nope'), (e: unknown) => e instanceof NotFoundError && e.exitCode === 3)
  })
})

describe('resolveStateDir and names', () => {
  test('precedence: flag, then $CLONECTL_STATE_DIR, then root, then $XDG_STATE_HOME, then ~/.local/state', () => {
    const env = {CLONECTL_STATE_DIR: '/env/state', XDG_STATE_HOME: '/xdg', HOME: '/home/u'}
    assert.equal(resolveStateDir('/flag', env, 1000), '/flag')
    assert.equal(resolveStateDir('rel', env, 1000), resolve('rel'), 'a relative flag is made absolute')
    assert.equal(resolveStateDir(undefined, env, 1000), '/env/state')
    assert.equal(resolveStateDir(undefined, env, 0), '/env/state', 'the env var wins over root')
    assert.equal(resolveStateDir(undefined, {XDG_STATE_HOME: '/xdg', HOME: '/home/u'}, 0), ROOT_STATE_DIR)
    assert.equal(resolveStateDir(undefined, {XDG_STATE_HOME: '/xdg', HOME: '/home/u'}, 1000), '/xdg/clonectl')
    assert.equal(resolveStateDir(undefined, {XDG_STATE_HOME: 'relative', HOME: '/home/u'}, 1000), '/home/u/.local/state/clonectl', 'a relative XDG_STATE_HOME is ignored')
    assert.equal(resolveStateDir(undefined, {HOME: '/home/u'}, 1000), '/home/u/.local/state/clonectl')
    assert.equal(resolveStateDir('', {HOME: '/home/u', CLONECTL_STATE_DIR: ''}, 1000), '/home/u/.local/state/clonectl')
  })

  test('validateName accepts plain names and refuses paths, dots, empty and long names', () => {
    for (const ok of ['db1', 'a', 'A.b_c-d', '9', 'x'.repeat(64)]) {
      assert.ok(isValidName(ok), ok)
      validateName('group', ok)
    }
    for (const bad of ['', '.', '..', '-x', '.hidden', 'a/b', '../x', 'a b', 'x'.repeat(65), 'é']) {
      assert.equal(isValidName(bad), false, JSON.stringify(bad))
      assert.throws(
        () => validateName('clone', bad),
        (e: unknown) => e instanceof UsageError && e.exitCode === 2 && e.message.includes(JSON.stringify(bad)) && /clone name/.test(e.message),
      )
    }
  })
})

describe('GroupLock', () => {
  async function groupDir(): Promise<string> {
    const d = join(dir, `lockgroup${n++}`)
    await fsp.mkdir(d, {recursive: true})
    return d
  }
  const opts = (d: string, extra: Partial<Parameters<typeof GroupLock.acquire>[0]> = {}): Parameters<typeof GroupLock.acquire>[0] => ({
    groupDir: d,
    group: 'g',
    command: 'clonectl clone sync g c1',
    onCompromised: (e) => assert.fail(`compromised: ${e.message}`),
    ...extra,
  })

  test('a second acquire fails fast with LockHeldError naming pid and command', async () => {
    const d = await groupDir()
    const first = await GroupLock.acquire(opts(d))
    try {
      assert.equal(first.holder.pid, process.pid)
      assert.deepEqual((await GroupLock.inspect(d))?.pid, process.pid)
      const t0 = Date.now()
      await assert.rejects(GroupLock.acquire(opts(d, {command: 'clonectl restore g'})), (e: unknown) => {
        assert.ok(e instanceof LockHeldError, String(e))
        assert.equal(e.exitCode, 4)
        assert.match(e.message, new RegExp(`pid ${process.pid}`))
        assert.match(e.message, /clonectl clone sync g c1/)
        assert.match(e.fix ?? '', /--wait/)
        return true
      })
      assert.ok(Date.now() - t0 < 5000, 'fails fast')
    } finally {
      await first.release()
    }
    assert.equal(await GroupLock.inspect(d), undefined, 'released')
    await assert.rejects(fsp.stat(GroupLock.holderPath(d)), /ENOENT/)
  })

  test('waitSeconds: the second acquire succeeds once the first releases', async () => {
    const d = await groupDir()
    const first = await GroupLock.acquire(opts(d))
    const second = GroupLock.acquire(opts(d, {command: 'clonectl restore g', waitSeconds: 30}))
    await sleep(600)
    await first.release()
    const lock = await second
    assert.equal(lock.holder.command, 'clonectl restore g')
    await lock.release()
  })

  test('waitSeconds expiring says how long it waited', async () => {
    const d = await groupDir()
    const first = await GroupLock.acquire(opts(d))
    try {
      await assert.rejects(GroupLock.acquire(opts(d, {waitSeconds: 0.5})), (e: unknown) => e instanceof LockHeldError && /waited/.test(e.message))
    } finally {
      await first.release()
    }
  })

  test('a lock left by a dead pid is taken over at once, and onStaleTakeover is called', async () => {
    const d = await groupDir()
    // A real pid that no longer exists.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {encoding: 'utf8'})
    const deadPid = Number(dead.stdout)
    assert.ok(deadPid > 0)
    await fsp.mkdir(GroupLock.lockPath(d))
    const holder = {pid: deadPid, command: 'clonectl restore g c1', startedAt: '2026-01-01T00:00:00Z', hostname: hostname(), token: 'abc'}
    await fsp.writeFile(GroupLock.holderPath(d), JSON.stringify(holder))
    assert.equal(await GroupLock.inspect(d), undefined, 'a dead holder does not count')
    let taken: HolderInfo | undefined
    const lock = await GroupLock.acquire(opts(d, {onStaleTakeover: (h) => (taken = h)}))
    try {
      assert.ok(taken, 'onStaleTakeover called')
      assert.equal(taken.pid, deadPid)
      assert.equal(taken.command, 'clonectl restore g c1')
      assert.equal(lock.holder.pid, process.pid)
      const onDisk = JSON.parse(await fsp.readFile(GroupLock.holderPath(d), 'utf8')) as HolderInfo
      assert.equal(onDisk.pid, process.pid)
    } finally {
      await lock.release()
    }
  })

  test('a missing group directory is NotFoundError', async () => {
    await assert.rejects(GroupLock.acquire(opts(join(dir, 'no-such-group'))), NotFoundError)
  })
})
