/**
 * The NBD and control sockets are private from the moment they exist (issue 13 item 3).
 *
 * Given `clonectl serve` started under umask 000 with `--socket` in a directory every user
 * can enter; when a watcher process stats both socket paths in a tight loop from before
 * serve starts; then the first mode it sees of each is 0600 or stricter (a bind under the
 * user's umask followed by a chmod showed 0777 first); and a client running as uid 65534
 * is refused (EACCES) on the NBD socket while root is served.
 *
 * And, since one start gives a watcher one short window to look through: given umask 000
 * in this process, when NbdServer and ControlServer bind a socket 100 times each while a
 * watcher stats it in a tight loop, then no mode it ever sees lets group or other in.
 *
 * Needs root (to run a client as another uid): the test fails, not skips, without it.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {connect} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {ControlServer} from '../../src/control/ControlServer.js'
import type {ExportBackend} from '../../src/nbd/ExportBackend.js'
import {NbdServer} from '../../src/nbd/NbdServer.js'
import {MiB, NbdTestClient, clonectlBin, clonectlOk, isRoot, tempDir} from '../helpers/serve.js'

let dir: string
let state: string

before(async () => {
  dir = await tempDir('sockets')
  state = join(dir, 'state')
  await fsp.writeFile(join(dir, 'src.img'), Buffer.alloc(4 * MiB))
  await clonectlOk(state, ['group', 'create', 'p', '--source', join(dir, 'src.img')])
})

after(async () => {
  await fsp.rm(dir, {recursive: true, force: true})
})

/**
 * A process that stats each path in a tight loop (no event-loop turn between tries) and
 * prints the mode of its first appearance as JSON once all have appeared (or after 60 s).
 * With "all" it goes on until its stdin closes, says "seen I" when path I first appears, and
 * prints every mode bit ever seen.
 */
const WATCHER = `
const {lstatSync} = require('node:fs')
const paths = JSON.parse(process.argv[1])
const all = process.argv[2] === 'all'
const seen = {}
let stop = false
if (all) process.stdin.on('close', () => (stop = true)).resume()
const t0 = Date.now()
process.stdout.write('watching\\n')
const loop = () => {
  const t1 = Date.now()
  while (Date.now() - t1 < 50 && (all || Object.keys(seen).length < paths.length)) {
    for (const p of paths) {
      if (!all && seen[p] !== undefined) continue
      let mode
      try { mode = lstatSync(p).mode & 0o777 } catch { continue }
      if (all && seen[p] === undefined) process.stdout.write('seen ' + paths.indexOf(p) + '\\n')
      seen[p] = (seen[p] ?? 0) | mode
    }
  }
  if ((all && !stop) || (!all && Object.keys(seen).length < paths.length && Date.now() - t0 < 60000)) return setImmediate(loop)
  process.stdout.write(JSON.stringify(seen) + '\\n')
  process.exit(0)
}
loop()
`

describe('serve under umask 000: sockets are private from their first moment', () => {
  test('given serve under umask 000 with --socket in an open directory, then each socket first appears 0600 and another uid is refused', async () => {
    assert.ok(isRoot, 'this test needs root (it runs a client as uid 65534); run the interop tests as root, as CI does')
    const open = join(dir, 'open')
    await fsp.mkdir(open)
    await fsp.chmod(open, 0o777)
    await fsp.chmod(dir, 0o755)
    const nbdSock = join(open, 'nbd.sock')
    const controlSock = join(state, 'groups', 'p', 'control.sock')

    const watcher = spawn(process.execPath, ['-e', WATCHER, JSON.stringify([nbdSock, controlSock])], {stdio: ['ignore', 'pipe', 'inherit']})
    let out = ''
    watcher.stdout.on('data', (b: Buffer) => (out += b.toString()))
    const watched = new Promise<void>((r) => watcher.on('exit', () => r()))
    while (!out.includes('watching')) await new Promise((r) => watcher.stdout.once('data', r))

    const serve = spawn('sh', ['-c', 'umask 000; exec "$0" "$@"', process.execPath, clonectlBin, 'serve', 'p', '--state-dir', state, '--socket', nbdSock], {stdio: ['ignore', 'ignore', 'pipe']})
    let err = ''
    serve.stderr.on('data', (b: Buffer) => (err += b.toString()))
    const exited = new Promise<void>((r) => serve.on('exit', () => r()))
    try {
      await Promise.race([watched, exited])
      assert.equal(serve.exitCode, null, `serve exited early: ${err}`)
      const first = JSON.parse(out.slice(out.indexOf('{'))) as Record<string, number>
      for (const p of [nbdSock, controlSock]) {
        assert.ok(first[p] !== undefined, `${p} appeared (serve stderr: ${err})`)
        assert.equal(first[p] & 0o077, 0, `${p} first appeared with mode 0${first[p].toString(8)}: group/other could connect before a chmod`)
      }
      while (!/serving group/.test(err)) await new Promise((r) => serve.stderr.once('data', r))

      // Another user: refused by the socket's mode (the directory lets everyone in).
      const probe = `const s=require('node:net').connect(process.argv[1]);s.on('connect',()=>{console.log('connected');process.exit(0)});s.on('error',(e)=>{console.log(e.code);process.exit(0)})`
      const asNobody = await new Promise<string>((resolve, reject) => {
        const c = spawn(process.execPath, ['-e', probe, nbdSock], {uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'pipe']})
        let o = ''
        c.stdout.on('data', (b: Buffer) => (o += b.toString()))
        c.on('error', reject)
        c.on('exit', () => resolve(o.trim()))
      })
      assert.equal(asNobody, 'EACCES', 'a client as uid 65534 is refused')
      // Root (the owner) is served.
      const c = await NbdTestClient.connect(nbdSock)
      assert.equal(c.size, 4 * MiB)
      await c.disconnect()
    } finally {
      watcher.kill('SIGKILL')
      serve.kill('SIGTERM')
      await exited
    }
  })
})

describe('NbdServer and ControlServer under umask 000, 100 binds each', () => {
  test('no mode a watcher ever sees lets group or other in', async () => {
    const nbdSock = join(dir, 'loop-nbd.sock')
    const controlSock = join(dir, 'loop-control.sock')
    const watcher = spawn(process.execPath, ['-e', WATCHER, JSON.stringify([nbdSock, controlSock]), 'all'], {stdio: ['pipe', 'pipe', 'inherit']})
    let out = ''
    watcher.stdout.on('data', (b: Buffer) => (out += b.toString()))
    const watched = new Promise<void>((r) => watcher.on('exit', () => r()))
    while (!out.includes('watching')) await new Promise((r) => watcher.stdout.once('data', r))
    const backend: ExportBackend = {
      size: MiB,
      readOnly: true,
      read: async (_o, n) => Buffer.alloc(n),
      write: async () => undefined,
      writeZeroes: async () => undefined,
      trim: async () => undefined,
      flush: async () => undefined,
    }
    // The first socket of each kind lives until the watcher has seen it (it is watching).
    const sighting = async (index: number): Promise<void> => {
      while (!out.includes(`seen ${index}\n`)) await new Promise((r) => watcher.stdout.once('data', r))
    }
    // Each socket lives for a connection's round trip.
    const roundTrip = (path: string): Promise<void> =>
      new Promise((resolve, reject) => {
        const c = connect(path, () => {
          c.destroy()
          resolve()
        })
        c.once('error', reject)
      })
    const old = process.umask(0)
    try {
      for (let i = 0; i < 100; i++) {
        const nbd = new NbdServer(backend)
        await nbd.listenUnix(nbdSock)
        await roundTrip(nbdSock)
        if (i === 0) await sighting(0)
        await nbd.close()
        await fsp.rm(nbdSock, {force: true})
        const control = new ControlServer(async () => undefined)
        await control.listen(controlSock)
        await roundTrip(controlSock)
        if (i === 0) await sighting(1)
        await control.close()
        await fsp.rm(controlSock, {force: true})
      }
    } finally {
      process.umask(old)
      watcher.stdin.end()
      await watched
    }
    const seen = JSON.parse(out.slice(out.indexOf('{'))) as Record<string, number>
    for (const p of [nbdSock, controlSock]) {
      assert.ok(seen[p] !== undefined, `the watcher saw ${p} (it reported ${out})`)
      assert.equal(seen[p] & 0o077, 0, `${p} was seen with mode bits 0${seen[p].toString(8)}: group/other could connect`)
    }
  })
})
