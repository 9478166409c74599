"""The built-in functions' source directories (one per AI service), deployed as they are.

Each directory is a function's whole code: `main.handler` runs in a sandboxed worker of the
function runtime. Nothing in Yunhan imports these modules (they import the heavy model
libraries); they are packages only so that they ship with Yunhan and are type-checked.
"""
