/**
 * The --json contracts (src/ui/results/schemas.ts) as test assertions: stdout of a command
 * run with --json must validate against its command's schema (success) or the error schema
 * (failure), closed objects included, so a leaked internal field fails the test.
 */
import assert from 'node:assert/strict'
import {Ajv, type ValidateFunction} from 'ajv'
import {errorSchema, resultSchemas} from '../../src/ui/results/schemas.js'

// strict: a schema that says something ajv would ignore (a typo'd keyword, an unknown format) fails to compile.
const ajv = new Ajv({strict: true, allErrors: true})
const compiled = new Map<string, ValidateFunction>()

export function validatorOf(id: string): ValidateFunction {
  let v = compiled.get(id)
  if (!v) {
    const schema = id === 'error' ? errorSchema : resultSchemas[id]
    assert.ok(schema, `command ${id} has a --json schema`)
    v = ajv.compile(schema)
    compiled.set(id, v)
  }
  return v
}

/** Whether `value` fits the schema of command `id` ("error" for the error object), and why not. */
export function check(id: string, value: unknown): string | undefined {
  const v = validatorOf(id)
  return v(value) ? undefined : ajv.errorsText(v.errors, {dataVar: id})
}

/** Assert that `value`, a command's parsed --json stdout, is what its schema promises. */
export function assertContract(id: string, value: unknown): void {
  const why = check(id, value)
  assert.equal(why, undefined, `${id === 'error' ? 'the --json error object' : `clonectl ${id.replace(/:/g, ' ')} --json`} breaks its schema: ${why}\n${JSON.stringify(value, null, 2)}`)
}

/** Assert a failure under --json: exit status, the error object on stdout, its code and status agreeing. */
export function assertJsonError(r: {code: number | null; json?: unknown; stdout: string; stderr: string}, status: number, code: string): {status: number; error: {code: string; name: string; message: string; fix?: string}} {
  assert.equal(r.code, status, `exit ${r.code}, expected ${status}; stdout: ${r.stdout} stderr: ${r.stderr}`)
  assertContract('error', r.json)
  const j = r.json as {status: number; error: {code: string; name: string; message: string; fix?: string}}
  assert.equal(j.status, status, 'the error object carries the exit status')
  assert.equal(j.error.code, code)
  return j
}
