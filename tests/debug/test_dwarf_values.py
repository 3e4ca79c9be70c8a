"""DWARF types and values printed as gdb 13 prints them. The expected strings are gdb's
(`print` of globals in a -O0 C program, `char a[16] = "hi"; char z[4096]; ...`), stated
here so the formatter is checked without a guest."""

from kvmdbg.debug.engine import dwarf_types as dt

CHAR = dt.DType("base", "char", 1, dt.ATE_SIGNED_CHAR)
INT = dt.DType("base", "int", 4, dt.ATE_SIGNED)
UINT = dt.DType("base", "unsigned int", 4, dt.ATE_UNSIGNED)


def fmt():
    return dt.Formatter(lambda a: "", lambda a, n: b"\0" * n)


def test_char_arrays_as_gdb_prints_them():
    assert dt.char_array(b"hi" + bytes(14)) == '"hi", \'\\000\' <repeats 13 times>'
    assert dt.char_array(bytes(4096)) == "'\\000' <repeats 4095 times>"
    assert dt.char_array(b"abcd") == '"abcd"'
    assert dt.char_array(b"x" * 20 + b"yz" + bytes(8)) == \
        "'x' <repeats 20 times>, \"yz\\000\\000\\000\\000\\000\\000\\000\""


def test_names_of_derived_types():
    ptr = dt.DType("ptr", "", 8, _target=INT)
    arr = dt.DType("array", "", _target=UINT, count=6)
    fn = dt.DType("func", "", _target=None, params=[ptr, INT], prototyped=True)
    fnptr = dt.DType("ptr", "", 8, _target=fn)
    const_char_ptr = dt.DType("ptr", "", 8, _target=dt.DType("const", "", _target=CHAR))
    assert [dt.name(t) for t in (ptr, arr, fn, fnptr, const_char_ptr)] == \
        ["int *", "unsigned int [6]", "void (int *, int)", "void (*)(int *, int)",
         "const char *"]
    assert dt.declarator(arr, "page_tables") == "unsigned int page_tables[6]"
    assert dt.declarator(fnptr, "fn") == "void (*fn)(int *, int)"


def test_struct_enum_and_repeats():
    colour = dt.DType("enum", "colour", 4, members=[("RED", 0), ("GREEN", 5), ("BLUE", 6)])
    s = dt.DType("struct", "s", 12, members=[dt.Member("a", INT, 0), dt.Member("c", colour, 4),
                                             dt.Member("ch", CHAR, 8)])
    data = (1).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"A\0\0\0"
    assert fmt().value(s, data) == "{a = 1, c = GREEN, ch = 65 'A'}"
    assert dt.ptype_lines(colour) == ["enum colour {RED, GREEN = 5, BLUE}"]
    arr = dt.DType("array", "", _target=INT, count=12)
    assert fmt().value(arr, bytes(48)) == "{0 <repeats 12 times>}"
    assert fmt().value(dt.DType("array", "", _target=INT, count=3),
                       b"".join(i.to_bytes(4, "little") for i in (4, 5, 6))) == "{4, 5, 6}"


def test_members_in_empty_pieces_are_optimized_out():
    # gdb prints the members of a value assembled from DW_OP_piece whose bytes no piece
    # gives as <optimized out> ({a = 4, c = <optimized out>, ch = 65 'A'}).
    colour = dt.DType("enum", "colour", 4, members=[("RED", 0)])
    s = dt.DType("struct", "s", 12, members=[dt.Member("a", INT, 0), dt.Member("c", colour, 4),
                                             dt.Member("ch", CHAR, 8)])
    data = (4).to_bytes(4, "little") + bytes(4) + b"A\0\0\0"
    assert fmt().value(s, data, missing=frozenset(range(4, 8))) == \
        "{a = 4, c = <optimized out>, ch = 65 'A'}"
    assert fmt().value(s, data, missing=frozenset(range(12))) == "<optimized out>"


def test_pieces_assemble_registers_and_constants():
    from types import SimpleNamespace as NS

    from kvmdbg.debug.engine import stack
    from kvmdbg.debug.engine.frames import Frame
    op = lambda name, *args: NS(op_name=name, args=list(args))     # noqa: E731
    frame = Frame(0, 0x1000, {"rax": 0x1122334455667788, "rdx": 0xAABB})
    # DW_OP_lit4 DW_OP_stack_value DW_OP_piece 4; DW_OP_piece 4 (empty); DW_OP_reg1 DW_OP_piece 8
    ops = [op("DW_OP_lit4"), op("DW_OP_stack_value"), op("DW_OP_piece", 4),
           op("DW_OP_piece", 4), op("DW_OP_reg1"), op("DW_OP_piece", 8)]
    data, missing = stack._pieces(None, frame, None, ops)
    assert data == (4).to_bytes(4, "little") + bytes(4) + (0xAABB).to_bytes(8, "little")
    assert missing == frozenset(range(4, 8))
