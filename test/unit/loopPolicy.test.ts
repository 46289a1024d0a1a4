/**
 * Where the calls on state files run (src/io/loopPolicy.ts). A command that serves no host
 * makes an atomic save with two thread-pool round trips (its fdatasync and the directory's
 * fsync) and takes and releases a group lock with none; a process that serves hosts makes
 * every one of them through the pool, so none can hold the event loop its host requests
 * share. Counted with async_hooks: every libuv fs request Node makes is an FSREQCALLBACK,
 * FSREQPROMISE or FILEHANDLECLOSEREQ resource. The serve test flips the process-wide policy,
 * so it runs last.
 */
import assert from 'node:assert/strict'
import {createHook} from 'node:async_hooks'
import {mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {after, test} from 'node:test'
import {CloneGroup} from '../../src/group/CloneGroup.js'
import {addClone, createGroup} from '../../src/group/GroupAdmin.js'
import {GroupServer} from '../../src/group/GroupServer.js'
import {writeFileAtomic} from '../../src/io/atomicWrite.js'
import {metadataOnCallingThread} from '../../src/io/loopPolicy.js'
import {nodeFs} from '../../src/io/NodeDurableFs.js'
import {GroupLock} from '../../src/store/GroupLock.js'
import {GroupStore} from '../../src/store/GroupStore.js'

const dir = mkdtempSync(join(tmpdir(), 'clonectl-loop-'))
after(() => rmSync(dir, {recursive: true, force: true}))

/** The libuv fs requests `fn` makes (its thread-pool round trips). */
async function poolRequests(fn: () => Promise<unknown>): Promise<number> {
  let n = 0
  const hook = createHook({
    init(_id, type) {
      if (type === 'FSREQCALLBACK' || type === 'FSREQPROMISE' || type === 'FILEHANDLECLOSEREQ') n++
    },
  })
  hook.enable()
  try {
    await fn()
  } finally {
    hook.disable()
  }
  return n
}

test('a command that serves no host: an atomic save makes two round trips, its fdatasync and the directory fsync', async () => {
  assert.equal(metadataOnCallingThread(), true)
  const path = join(dir, 'group.json')
  writeFileSync(path, 'old')
  assert.equal(await poolRequests(() => writeFileAtomic(nodeFs, path, Buffer.from('new'))), 2)
  assert.equal(readFileSync(path, 'utf8'), 'new')
  assert.deepEqual(
    readdirSync(dir).filter((n) => n.includes('.tmp-')),
    [],
    'no temp file is left',
  )
})

test('a quick file is written, read, truncated and synced with synchronous calls; datasync alone uses the pool', async () => {
  const path = join(dir, 'quick.bin')
  const n = await poolRequests(async () => {
    const f = await nodeFs.open(path, {write: true, create: 'new', quick: true})
    await f.write(Buffer.from('abcdef'), 2)
    await f.truncate(6)
    assert.equal(await f.size(), 6)
    const back = Buffer.alloc(6)
    assert.equal(await f.read(back, 0), 6)
    assert.deepEqual(back, Buffer.from([0, 0, 0x61, 0x62, 0x63, 0x64]))
    await f.datasync()
    await f.close()
  })
  assert.equal(n, 1)
  const ro = await nodeFs.open(path, {quick: true})
  await assert.rejects(ro.write(Buffer.from('x'), 0), {code: 'EBADF'})
  await assert.rejects(ro.truncate(0), {code: 'EBADF'})
  await ro.close()
})

test('a command that serves no host takes and releases a group lock without a round trip', async () => {
  const groupDir = join(dir, 'lockgroup')
  mkdirSync(groupDir)
  // proper-lockfile is imported on first use; from dist/ that import reads its files.
  await (await GroupLock.acquire({groupDir, group: 'lockgroup', command: 'test', onCompromised: () => undefined})).release()
  const n = await poolRequests(async () => {
    const lock = await GroupLock.acquire({groupDir, group: 'lockgroup', command: 'test', onCompromised: () => undefined})
    assert.deepEqual(readdirSync(groupDir).sort(), ['lock', 'lock.holder.json'])
    await lock.release()
  })
  assert.equal(n, 0)
  assert.deepEqual(readdirSync(groupDir), [], 'the lock, its holder file and the gate are gone')
})

test('serve: from GroupServer.start on, every state-file call goes through the pool', async () => {
  const ctx = {fs: nodeFs, store: new GroupStore(nodeFs, join(dir, 'state'))}
  mkdirSync(join(dir, 'state', 'groups'), {recursive: true, mode: 0o700})
  writeFileSync(join(dir, 'src.img'), Buffer.alloc(1024 * 1024, 0x11))
  await createGroup(ctx, {name: 'g', sourcePath: join(dir, 'src.img'), extentSize: 64 * 1024})
  const g = await CloneGroup.open(ctx, 'g', {writable: true})
  await addClone(g, {clone: 'c1', path: join(dir, 'c1.img'), create: true})
  await g.close()
  const server = await GroupServer.start(ctx, 'g', {command: 'test serve', socket: join(dir, 'nbd.sock')})
  try {
    assert.equal(metadataOnCallingThread(), false)
    const path = join(dir, 'served.json')
    // open, write, fdatasync, close, rename, and the directory's open, fsync and close
    assert.equal(await poolRequests(() => writeFileAtomic(nodeFs, path, Buffer.from('x'))), 8)
    const f = await nodeFs.open(join(dir, 'served.bin'), {write: true, create: 'new', quick: true})
    assert.equal(await poolRequests(() => f.close()), 1, 'a quick file is a FileHandle again')
  } finally {
    await server.stop()
  }
})
