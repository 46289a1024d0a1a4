/**
 * stdout and stderr written straight to their descriptor when they are a pipe or a file
 * (src/ui/directStdio.ts): whole and in order, EPIPE without a crash, EAGAIN handed to Node's
 * stream in order, other errors thrown; and the CLI's own output through it.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {PassThrough} from 'node:stream'
import {after, describe, test} from 'node:test'
import {fileURLToPath} from 'node:url'
import {DirectStdio} from '../../src/ui/directStdio.js'

const root = join(fileURLToPath(import.meta.url), '..', '..', '..', '..')
const moduleUrl = new URL('../../src/ui/directStdio.js', import.meta.url).href
const dir = mkdtempSync(join(tmpdir(), 'clonectl-stdio-'))
after(() => rmSync(dir, {recursive: true, force: true}))

function errno(code: string): Error {
  return Object.assign(new Error(`${code}: simulated`), {code})
}

/** A child node process that installs DirectStdio, then runs `body`. */
function childScript(body: string): string {
  return `import(${JSON.stringify(moduleUrl)}).then(async (m) => { m.installDirectStdio(); ${body} })`
}

describe('DirectStdio', () => {
  test('a partial write is continued: every byte, in order, before write() returns', () => {
    const got: Buffer[] = []
    const s = new DirectStdio(9, () => assert.fail('no fallback'), (_fd, data, offset, length) => {
      const n = Math.min(3, length)
      got.push(Buffer.from(data.subarray(offset, offset + n)))
      return n
    })
    assert.equal(s.write('hello, world'), true)
    assert.equal(s.write(Buffer.from('!')), true)
    assert.equal(Buffer.concat(got).toString(), 'hello, world!')
    assert.equal(s.isTTY, false)
  })

  test('EAGAIN: the rest of that write and every later one go to Node\'s stream, in order, and its drain is heard', async () => {
    const written: string[] = []
    let calls = 0
    const node = new PassThrough()
    const received: Buffer[] = []
    node.on('data', (b: Buffer) => received.push(b))
    const s = new DirectStdio(9, () => node, (_fd, data, offset, length) => {
      calls++
      if (calls === 2) throw errno('EAGAIN')
      const n = Math.min(4, length)
      written.push(Buffer.from(data.subarray(offset, offset + n)).toString())
      return n
    })
    s.write('abcdefgh')
    s.write('ijkl')
    let drained = false
    s.on('drain', () => {
      drained = true
    })
    node.emit('drain')
    await new Promise((r) => setImmediate(r))
    assert.deepEqual(written, ['abcd'], 'written directly before EAGAIN')
    assert.equal(Buffer.concat(received).toString(), 'efghijkl', "then through Node's stream, in order")
    assert.equal(calls, 2, 'the descriptor is not written again')
    assert.ok(drained)
  })

  test('EPIPE: no throw, later writes dropped, callbacks called, listeners told once', async () => {
    let calls = 0
    const s = new DirectStdio(9, () => assert.fail('no fallback'), () => {
      calls++
      throw errno('EPIPE')
    })
    const errors: unknown[] = []
    s.on('error', (e) => errors.push(e))
    let callbacks = 0
    assert.equal(
      s.write('a', () => callbacks++),
      true,
    )
    s.write('b', () => callbacks++)
    await new Promise((r) => setImmediate(r))
    assert.equal(calls, 1)
    assert.equal(callbacks, 2)
    assert.equal(errors.length, 1)
    assert.equal((errors[0] as {code: string}).code, 'EPIPE')
  })

  test('EINTR: the write is made again', () => {
    let calls = 0
    const got: string[] = []
    const s = new DirectStdio(9, () => assert.fail('no fallback'), (_fd, data, offset, length) => {
      if (calls++ === 0) throw errno('EINTR')
      got.push(Buffer.from(data.subarray(offset, offset + length)).toString())
      return length
    })
    s.write('once')
    assert.deepEqual(got, ['once'])
  })

  test('any other error (EIO, ENOSPC) is thrown by write(), as Node\'s stdout to a file does', () => {
    const s = new DirectStdio(9, () => assert.fail('no fallback'), () => {
      throw errno('ENOSPC')
    })
    assert.throws(() => s.write('x'), /ENOSPC/)
  })

  test('through a real pipe: 4 MiB and console.log lines arrive whole and in order, stderr apart', async () => {
    const child = spawn(process.execPath, ['-e', childScript(`
      const big = Buffer.alloc(4 * 1024 * 1024, 0x61)
      process.stdout.write('start\\n')
      process.stdout.write(big)
      console.log('after %d', 1)
      process.stderr.write('to stderr\\n')
      console.error('err line')
      process.stdout.write('end\\n', () => process.stdout.write(process.stdout.constructor.name + '\\n'))
    `)], {stdio: ['ignore', 'pipe', 'pipe']})
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => err.push(b))
    const code = await new Promise<number | null>((r) => child.on('close', r))
    assert.equal(code, 0, Buffer.concat(err).toString())
    const text = Buffer.concat(out).toString()
    assert.equal(text, `start\n${'a'.repeat(4 * 1024 * 1024)}after 1\nend\nDirectStdio\n`)
    assert.equal(Buffer.concat(err).toString(), 'to stderr\nerr line\n')
  })

  test('the reader gone (EPIPE): the process neither crashes nor hangs, console.log included', async () => {
    const child = spawn(process.execPath, ['-e', childScript(`
      process.stdout.on('error', (e) => { if (e.code !== 'EPIPE') throw e })
      process.stdin.once('data', () => {
        for (let i = 0; i < 3; i++) process.stdout.write('x'.repeat(100000))
        console.log('still here')
        process.stderr.write('done\\n')
        process.exit(0)
      })
    `)], {stdio: ['pipe', 'pipe', 'pipe']})
    const err: Buffer[] = []
    child.stderr.on('data', (b: Buffer) => err.push(b))
    child.stdout.destroy()
    child.stdin.write('go\n')
    const code = await new Promise<number | null>((r) => child.on('close', r))
    assert.equal(code, 0, Buffer.concat(err).toString())
    assert.equal(Buffer.concat(err).toString(), 'done\n')
  })

  test('a file, /dev/null and CLONECTL_STDIO=node: direct for a file only', () => {
    const which = (stdio: 'file' | 'null'): string => {
      const path = join(dir, 'out.txt')
      const r = spawnSync('sh', ['-c', `"${process.execPath}" -e '${childScript('process.stderr.write(process.stdout.constructor.name)').replace(/'/g, `'\\''`)}' > ${stdio === 'file' ? path : '/dev/null'}`], {encoding: 'utf8'})
      assert.equal(r.status, 0, r.stderr)
      return r.stderr
    }
    assert.equal(which('file'), 'DirectStdio')
    assert.notEqual(which('null'), 'DirectStdio')
  })
})

describe('the CLI through DirectStdio', () => {
  test('piped, a command\'s result and its --json reach the reader whole; serve and CLONECTL_STDIO=node keep Node\'s streams', () => {
    const run = (env: NodeJS.ProcessEnv): {stdout: string; stderr: string} => {
      const r = spawnSync(process.execPath, [join(root, 'bin', 'run.js'), 'group', 'list', '--json', '--state-dir', join(dir, 'state')], {encoding: 'utf8', env: {...process.env, ...env}})
      assert.equal(r.status, 0, r.stderr)
      return r
    }
    assert.deepEqual(JSON.parse(run({}).stdout), [])
    assert.deepEqual(JSON.parse(run({CLONECTL_STDIO: 'node'}).stdout), [])
    // Which stream each process had, by the modules it loaded.
    const loaded = (env: NodeJS.ProcessEnv, args = ['group', 'list', '--state-dir', join(dir, 'state')]): string[] => {
      const r = spawnSync(process.execPath, ['-r', join(dir, 'ml.cjs'), join(root, 'bin', 'run.js'), ...args], {encoding: 'utf8', env: {...process.env, ...env}})
      assert.equal(r.status, 0, r.stderr)
      return readFileSync(join(dir, 'ml.txt'), 'utf8').split('\n')
    }
    const preload = `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(join(dir, 'ml.txt'))}, process.moduleLoadList.join('\\n')))`
    writeFileSync(join(dir, 'ml.cjs'), preload)
    assert.ok(!loaded({}).includes('NativeModule net'), 'a piped stdout no longer loads node:net')
    assert.ok(loaded({CLONECTL_STDIO: 'node'}).includes('NativeModule net'), "with CLONECTL_STDIO=node it is Node's socket")
    // serve's event loop carries host I/O: its log writes must queue, never block it.
    assert.ok(loaded({}, ['serve', '--help']).includes('NativeModule net'), "serve keeps Node's streams")
  })
})
